package auth

import (
	"context"
	"crypto/x509"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/pki"
)

// Refusals beyond this rate are counted, not each written to etcd: a
// flood of bad calls must not become a flood of writes.
const (
	refusalAuditRate  = 20
	refusalAuditBurst = 200
)

// Authorizer authenticates and authorizes every call (Unary and Stream
// interceptors) and ends the streams of agents revoked meanwhile.
type Authorizer struct {
	access   *Access
	audit    *Audit
	resolver Resolver
	logger   hclog.Logger
	rules    map[string]Rule
	refusals *rate.Limiter

	mu sync.Mutex
	// streams are the open streams of agents, by agent name.
	streams map[string]map[*agentStream]struct{}
	// unaudited counts the refusals not written since lastDropLog.
	unaudited   int
	lastDropLog time.Time
}

// dropLogEvery bounds how often the refusals left out of the audit are logged.
const dropLogEvery = 10 * time.Second

// dropped counts a refusal left out of the audit, logged once in a while
// with the count: a flood of refusals must not flood the log either.
func (z *Authorizer) dropped(ev *osvcv1.AuditEvent) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.unaudited++
	if now := time.Now(); now.Sub(z.lastDropLog) >= dropLogEvery {
		z.logger.Warn("refusals not audited: more than the audit's rate", "count", z.unaudited, "rate_per_s", refusalAuditRate,
			"last_principal", ev.Principal, "last_method", ev.Method, "last_peer", ev.Peer)
		z.unaudited, z.lastDropLog = 0, now
	}
}

// agentStream is an agent's open stream, ended when its certificate is
// no longer accepted.
type agentStream struct {
	serial string
	cancel context.CancelCauseFunc
}

// errRevoked ends the stream of an agent revoked meanwhile.
var errRevoked = errdefs.Newf(errdefs.ErrUnauthenticated, "this agent's certificate was revoked; enroll it again with a new join token")

// errExpired ends an agent's stream when its certificate expires.
var errExpired = errdefs.Newf(errdefs.ErrUnauthenticated, "this agent's certificate expired during the stream; reconnect with the renewed one")

// NewAuthorizer returns the authorizer of a server.
func NewAuthorizer(access *Access, audit *Audit, resolver Resolver, logger hclog.Logger) *Authorizer {
	return &Authorizer{
		access: access, audit: audit, resolver: resolver, logger: logger.Named("auth"), rules: Rules,
		refusals: rate.NewLimiter(refusalAuditRate, refusalAuditBurst),
		streams:  make(map[string]map[*agentStream]struct{}),
	}
}

// call is what the interceptor learns of one call.
type call struct {
	method   string
	rule     Rule
	p        *Principal
	peer     string
	resource string
	// reason is the reason the request gives, if any.
	reason string
	// override is who a public call acted as (SetAuditPrincipal).
	override string
	// claimed is who a refused credential claimed to be.
	claimed string
}

// credential is what a call presents: the verified client certificate of
// its connection, else the text of its bearer token ("" without one).
type credential struct {
	cert   *x509.Certificate
	bearer string
	// malformed is why the authorization header is unusable.
	malformed error
}

func credentialOf(ctx context.Context) credential {
	if pr, ok := peer.FromContext(ctx); ok {
		if ti, ok := pr.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 {
			return credential{cert: ti.State.VerifiedChains[0][0]}
		}
	}
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	switch {
	case len(vals) == 0:
		return credential{}
	case len(vals) > 1:
		return credential{malformed: errdefs.Newf(errdefs.ErrUnauthenticated, "more than one authorization header; send one: Bearer <token>")}
	}
	text, ok := strings.CutPrefix(vals[0], "Bearer ")
	if !ok {
		return credential{malformed: errdefs.Newf(errdefs.ErrUnauthenticated, "the authorization header must be \"Bearer <token>\"")}
	}
	return credential{bearer: strings.TrimSpace(text)}
}

// claimed names who the credential of a refused call claims to be, for
// the audit: the agent its certificate names, or the token's id.
func claimed(ctx context.Context) string {
	c := credentialOf(ctx)
	if c.cert != nil {
		if id, err := pki.AgentFromCert(c.cert); err == nil {
			return id.String()
		}
	}
	if id, _, err := parseSecret(kindToken, c.bearer); err == nil {
		return tokenPrincipal(id)
	}
	return ""
}

// authenticate finds the caller of ctx: an agent by its verified client
// certificate, else a bearer token; nil without a credential.
func (z *Authorizer) authenticate(ctx context.Context) (*Principal, error) {
	c := credentialOf(ctx)
	switch {
	case c.cert != nil:
		return z.access.AuthenticateAgent(ctx, c.cert)
	case c.malformed != nil:
		return nil, c.malformed
	case c.bearer == "":
		return nil, nil
	}
	return z.access.AuthenticateToken(ctx, c.bearer)
}

// admit runs every check a call passes before its handler: the rule, the
// credential, the role. Scope checks need the request and come after.
func (z *Authorizer) admit(ctx context.Context, method string) (*call, error) {
	c := &call{method: method}
	if pr, ok := peer.FromContext(ctx); ok && pr.Addr != nil {
		c.peer = pr.Addr.String()
	}
	rule, ok := z.rules[method]
	if !ok {
		// Fail closed: a method added without an entry serves nobody.
		return c, errdefs.Newf(errdefs.ErrPermissionDenied, "%s has no access rule; this is a server bug, report it", method)
	}
	c.rule = rule
	if rule.Permission == Public {
		return c, nil
	}
	p, err := z.authenticate(ctx)
	if err != nil {
		c.claimed = claimed(ctx)
		return c, err
	}
	if p == nil {
		return c, errdefs.Newf(errdefs.ErrUnauthenticated, "%s needs a credential: a token (osvcctl --token-file, $OSVC_TOKEN, osvcctl login) or an enrolled agent's certificate", method)
	}
	c.p = p
	if !allows(rule.Permission, p) {
		return c, errdefs.Newf(errdefs.ErrPermissionDenied, "%s (%s) may not call %s", p.ID, RoleName(p.Role), method)
	}
	if rule.precheck != nil {
		if _, err := rule.precheck(ctx, z.resolver, p, nil); err != nil {
			return c, err
		}
	}
	return c, nil
}

// scope runs the rule's scope check on one request message.
func (z *Authorizer) scope(ctx context.Context, c *call, req any) error {
	if c.rule.scope == nil || c.p == nil {
		if c.resource == "" {
			c.resource = Resource(req)
		}
		return nil
	}
	resource, err := c.rule.scope(ctx, z.resolver, c.p, req)
	if c.resource == "" {
		c.resource = resource
	}
	return err
}

// Unary is the unary server interceptor.
func (z *Authorizer) Unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	c, err := z.admit(ctx, info.FullMethod)
	c.reason = Reason(req)
	if err == nil {
		err = z.scope(ctx, c, req)
	}
	if err != nil {
		if c.resource == "" {
			c.resource = Resource(req)
		}
		err = errdefs.ToGRPC(err)
		z.record(ctx, c, err)
		return nil, err
	}
	if c.p != nil {
		ctx = WithPrincipal(ctx, c.p)
	}
	ctx = withCall(ctx, c)
	resp, err := handler(ctx, req)
	if c.rule.Mutates {
		z.record(ctx, c, err)
	}
	return resp, err
}

// Stream is the stream server interceptor. The scope check runs on each
// message the handler receives; an agent's stream ends when its
// certificate expires or is revoked.
func (z *Authorizer) Stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx := ss.Context()
	c, err := z.admit(ctx, info.FullMethod)
	if err != nil {
		err = errdefs.ToGRPC(err)
		z.record(ctx, c, err)
		return err
	}
	if c.p != nil {
		ctx = WithPrincipal(ctx, c.p)
	}
	ctx = withCall(ctx, c)
	var cancel context.CancelCauseFunc
	ctx, cancel = context.WithCancelCause(ctx)
	defer cancel(nil)
	if c.p != nil && c.p.Role == osvcv1.Role_ROLE_AGENT {
		s := &agentStream{serial: c.p.Serial, cancel: cancel}
		z.track(c.p.Agent, s)
		defer z.untrack(c.p.Agent, s)
		timer := time.AfterFunc(time.Until(c.p.NotAfter), func() { cancel(errExpired) })
		defer timer.Stop()
	}
	w := &scopedStream{ServerStream: ss, ctx: ctx, z: z, c: c}
	err = handler(srv, w)
	if cause := context.Cause(ctx); errors.Is(cause, errRevoked) || errors.Is(cause, errExpired) {
		err = errdefs.ToGRPC(cause)
	} else if w.refused != nil {
		err = w.refused
	}
	if c.rule.Mutates || w.refused != nil {
		z.record(ctx, c, err)
	}
	return err
}

// scopedStream checks each message its handler receives.
type scopedStream struct {
	grpc.ServerStream
	ctx     context.Context
	z       *Authorizer
	c       *call
	refused error
}

func (s *scopedStream) Context() context.Context { return s.ctx }

func (s *scopedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if err := s.z.scope(s.ctx, s.c, m); err != nil {
		s.refused = errdefs.ToGRPC(err)
		return s.refused
	}
	return nil
}

func (z *Authorizer) track(agent string, s *agentStream) {
	z.mu.Lock()
	defer z.mu.Unlock()
	if z.streams[agent] == nil {
		z.streams[agent] = make(map[*agentStream]struct{})
	}
	z.streams[agent][s] = struct{}{}
}

func (z *Authorizer) untrack(agent string, s *agentStream) {
	z.mu.Lock()
	defer z.mu.Unlock()
	delete(z.streams[agent], s)
	if len(z.streams[agent]) == 0 {
		delete(z.streams, agent)
	}
}

// Run ends the streams of agents whose certificates stop being accepted
// (revoked, or superseded), as etcd reports it, until ctx ends.
func (z *Authorizer) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		err := z.access.WatchRevocations(ctx, func(name string, revoked bool, serials []string) {
			z.mu.Lock()
			defer z.mu.Unlock()
			for s := range z.streams[name] {
				if revoked || !slices.Contains(serials, s.serial) {
					s.cancel(errRevoked)
				}
			}
		})
		if err != nil && ctx.Err() == nil {
			z.logger.Warn("watching agent revocations failed; watching again", "error", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
	return nil
}

// record writes one audit event for c ending with err.
func (z *Authorizer) record(ctx context.Context, c *call, err error) {
	ev := &osvcv1.AuditEvent{Principal: Anonymous, Method: c.method, Resource: c.resource, Code: status.Code(err).String(), Peer: c.peer, Reason: c.reason}
	if c.p != nil {
		ev.Principal, ev.Role = c.p.ID, c.p.Role
	} else if c.claimed != "" {
		ev.Principal = c.claimed
	}
	if ov := auditOverride(ctx); ov != "" {
		ev.Principal = ov
	}
	if err != nil {
		ev.Message = status.Convert(err).Message()
		if code := status.Code(err); isRefusal(code) && !z.refusals.Allow() {
			z.dropped(ev)
			return
		}
	}
	// The audit outlives the call: a canceled caller is still recorded.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := z.audit.Record(actx, ev); err != nil {
		z.logger.Error("writing the audit event failed", "error", err, "principal", ev.Principal, "method", c.method, "code", ev.Code)
	}
}
