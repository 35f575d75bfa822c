package auth

import (
	"context"

	"google.golang.org/grpc/codes"
)

type callKey struct{}

func withCall(ctx context.Context, c *call) context.Context {
	return context.WithValue(ctx, callKey{}, c)
}

// SetAuditPrincipal names who a public call acted as, once its handler
// knows (Enroll: the join token), and its resource.
func SetAuditPrincipal(ctx context.Context, principal, resource string) {
	if c, ok := ctx.Value(callKey{}).(*call); ok {
		c.override = principal
		if resource != "" {
			c.resource = resource
		}
	}
}

func auditOverride(ctx context.Context) string {
	if c, ok := ctx.Value(callKey{}).(*call); ok {
		return c.override
	}
	return ""
}

// isRefusal tells the codes of an authentication or authorization refusal.
func isRefusal(code codes.Code) bool {
	return code == codes.Unauthenticated || code == codes.PermissionDenied
}
