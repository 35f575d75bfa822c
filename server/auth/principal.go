// Package auth decides who may call osvc-server and what they may do: it
// authenticates each call (an agent's client certificate, or a bearer
// token), authorizes it from one table of method → permission, scopes
// operators and agents to their sites, and audits every mutation and
// refusal. It also keeps the credentials: tokens and join tokens (stored
// hashed), agent enrollment, renewal and revocation.
package auth

import (
	"context"
	"slices"
	"time"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

// Principal is an authenticated caller.
type Principal struct {
	// ID names the caller in the audit: "token:{id}" or "agent:{site}/{name}".
	ID   string
	Role osvcv1.Role
	// Sites scope an operator; an agent's one site.
	Sites []string
	// Agent is the agent's name, for ROLE_AGENT.
	Agent string
	// Serial is the agent's certificate serial (hex); NotAfter its expiry.
	Serial   string
	NotAfter time.Time
}

// Anonymous is who a call without a credential is audited as.
const Anonymous = "anonymous"

// HasSite reports whether the principal may act on site: an admin on all,
// an operator or agent on its own.
func (p *Principal) HasSite(site string) bool {
	if p.Role == osvcv1.Role_ROLE_ADMIN {
		return true
	}
	return slices.Contains(p.Sites, site)
}

type principalKey struct{}

// FromContext returns the caller a handler serves, set by the interceptor.
func FromContext(ctx context.Context) (*Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(*Principal)
	return p, ok
}

// WithPrincipal returns ctx carrying p, as the interceptor passes it on.
func WithPrincipal(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// RoleName is the role as users write it: admin, operator, viewer, agent.
func RoleName(r osvcv1.Role) string {
	switch r {
	case osvcv1.Role_ROLE_ADMIN:
		return "admin"
	case osvcv1.Role_ROLE_OPERATOR:
		return "operator"
	case osvcv1.Role_ROLE_VIEWER:
		return "viewer"
	case osvcv1.Role_ROLE_AGENT:
		return "agent"
	}
	return "none"
}

// ParseRole reads a role as users write it.
func ParseRole(s string) (osvcv1.Role, bool) {
	for _, r := range []osvcv1.Role{osvcv1.Role_ROLE_ADMIN, osvcv1.Role_ROLE_OPERATOR, osvcv1.Role_ROLE_VIEWER} {
		if RoleName(r) == s {
			return r, true
		}
	}
	return osvcv1.Role_ROLE_UNSPECIFIED, false
}
