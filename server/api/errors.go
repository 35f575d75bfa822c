// Package api holds the thin gRPC adapters of osvc-server.
package api

import (
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"

	"github.com/osvc/osvc/pkg/errdefs"
)

// Status turns a domain error into the gRPC status error a handler returns,
// through errdefs.ToGRPC, the one translation both halves share. An error of
// no known kind is Internal and is logged here, since nothing above the
// handler sees its cause otherwise.
func Status(err error) error {
	if errdefs.Code(err) == codes.Internal {
		hclog.L().Named("api").Error("internal error", "error", err)
	}
	return errdefs.ToGRPC(err)
}
