// Package integration holds tests that build the real binaries (osvc-server,
// osvc-agent, osvcctl), run them as processes on loopback ports, and drive them
// through the gRPC API like an administrator would. Results are checked
// against the serviced WIM files themselves, read with wimlib-imagex.
package integration
