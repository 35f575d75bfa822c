package main

import (
	"fmt"

	"google.golang.org/grpc"

	"github.com/osvc/osvc/pkg/pki"
)

// target is a server under test: its address and the authority it made,
// which the benchmark's clients trust as osvcctl and agents do.
type target struct {
	addr, caFile string
}

// dial connects to t over TLS.
func (t target) dial(opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	creds, err := pki.ClientCredentials(t.addr, pki.ClientOptions{CAFile: t.caFile})
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(t.addr, append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to osvc-server at %s: %w", t.addr, err)
	}
	return conn, nil
}
