package pki

import (
	"fmt"
	"net"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// serversScheme names the resolver a client of several servers gets.
const serversScheme = "osvc-servers"

// SplitServers parses a comma-separated list of osvc-server addresses
// (host:port), the replicas a client may use.
func SplitServers(list string) ([]string, error) {
	var out []string
	for s := range strings.SplitSeq(list, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			return nil, fmt.Errorf("server list %q has an empty entry; give host:port addresses separated by commas", list)
		}
		if _, _, err := net.SplitHostPort(s); err != nil {
			return nil, fmt.Errorf("server address %q: %v; give host:port", s, err)
		}
		out = append(out, s)
	}
	return out, nil
}

// NewClient is grpc.NewClient for a comma-separated list of servers. One
// address is dialed as it is. Several go through a resolver of this
// client's own and gRPC's pick_first policy over the list shuffled: each
// client settles on one replica at random and moves to another when its
// own fails (a stream on it then ends with Unavailable and the client opens
// it again on the next). Each address's certificate is checked against its
// own host name (give the credentials of ClientCredentials with the same list).
func NewClient(servers string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	addrs, err := SplitServers(servers)
	if err != nil {
		return nil, err
	}
	if len(addrs) == 1 {
		return grpc.NewClient(addrs[0], opts...)
	}
	r := manual.NewBuilderWithScheme(serversScheme)
	state := resolver.State{}
	for _, a := range addrs {
		host, _, _ := net.SplitHostPort(a)
		state.Addresses = append(state.Addresses, resolver.Address{Addr: a, ServerName: host})
	}
	r.InitialState(state)
	opts = append([]grpc.DialOption{
		grpc.WithResolvers(r),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"pick_first":{"shuffleAddressList":true}}]}`),
	}, opts...)
	return grpc.NewClient(serversScheme+":///"+strings.ReplaceAll(servers, ",", "_"), opts...)
}
