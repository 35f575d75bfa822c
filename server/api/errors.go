// Package api holds the thin gRPC adapters of osvc-server.
package api

import (
	"github.com/hashicorp/go-hclog"

	"github.com/osvc/osvc/pkg/errdefs"
)

// Status turns a domain error into the gRPC status error a handler returns,
// through errdefs.ToGRPC, the one translation both halves share. An error of
// no known kind is Internal: its cause is logged here with an incident id,
// and the client gets the id, not the cause (it names server paths).
func Status(err error) error {
	public, incident := errdefs.Conceal(err)
	if incident != "" {
		hclog.L().Named("api").Error("internal error", "incident", incident, "error", err)
	}
	return errdefs.ToGRPC(public)
}
