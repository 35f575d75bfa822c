package agentsvc

import (
	"context"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

// SetAssignment replaces how s builds an Assign, so tests can make it fail.
// Call it before s serves streams.
func SetAssignment(s *Service, f func(ctx context.Context, run string, token int64) (*osvcv1.Assign, error)) {
	s.assignment = f
}

// Assignment is how s builds an Assign in production.
func Assignment(s *Service) func(ctx context.Context, run string, token int64) (*osvcv1.Assign, error) {
	return s.servicing.Assignment
}

// Resync checks every stream connected to s against etcd now, as after a
// compacted watch or at the periodic resync.
func Resync(ctx context.Context, s *Service) { s.resyncAll(ctx) }
