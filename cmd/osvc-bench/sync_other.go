//go:build !unix

package main

// syncDisks does nothing where the servicing benchmarks cannot run (they
// need wimlib-imagex and FUSE).
func syncDisks() {}
