package auth

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/types/known/timestamppb"

	storev1 "github.com/osvc/osvc/gen/osvc/store/v1"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/names"
	"github.com/osvc/osvc/pkg/pki"
	"github.com/osvc/osvc/server/sites"
	"github.com/osvc/osvc/server/store"
)

// Defaults and limits of credentials.
const (
	DefaultJoinTokenTTL = time.Hour
	MaxJoinTokenTTL     = 30 * 24 * time.Hour
	MaxJoinTokenUses    = 10000
	// MaxTokens bounds the tokens kept, so listing them stays one request.
	MaxTokens = 1000
	// maxDescriptionLen bounds a token's description.
	maxDescriptionLen = 200
	// maxSites bounds an operator's sites.
	maxSites = 100
)

// AdminTokenFile is the file under the data directory the first admin
// token is written to at first start.
const AdminTokenFile = "admin.token"

// Access keeps osvc's credentials in etcd.
type Access struct {
	st  *store.Store
	ca  *pki.CA
	now func() time.Time
	// agentValidity is how long an agent certificate is valid.
	agentValidity time.Duration
}

// NewAccess returns the credential store on st, issuing agent certificates
// from ca valid for agentValidity (0: pki.DefaultAgentValidity).
func NewAccess(st *store.Store, ca *pki.CA, agentValidity time.Duration) *Access {
	if agentValidity <= 0 {
		agentValidity = pki.DefaultAgentValidity
	}
	return &Access{st: st, ca: ca, now: time.Now, agentValidity: agentValidity}
}

func (a *Access) tokenKey(id string) string   { return a.st.Prefix() + "tokens/" + id }
func (a *Access) joinKey(id string) string    { return a.st.JoinTokenKey(id) }
func (a *Access) identityKey(n string) string { return a.st.AgentIdentityKey(n) }
func (a *Access) identitiesPrefix() string    { return a.st.AgentIdentitiesPrefix() }
func (a *Access) bootstrapKey() string        { return a.st.Prefix() + "bootstrap/admin-token" }
func tokenPrincipal(id string) string         { return "token:" + id }
func joinPrincipal(id string) string          { return "join-token:" + id }
func (a *Access) tokensPrefix() string        { return a.st.Prefix() + "tokens/" }

// CreateToken makes a bearer token; the secret is returned only here.
func (a *Access) CreateToken(ctx context.Context, by string, req *osvcv1.CreateTokenRequest) (*osvcv1.Token, string, error) {
	role := req.GetRole()
	sites := slices.Clone(req.GetSites())
	switch role {
	case osvcv1.Role_ROLE_ADMIN, osvcv1.Role_ROLE_VIEWER:
		if len(sites) > 0 {
			return nil, "", errdefs.InvalidArgument("sites", "only an operator token is scoped to sites; drop --site for an admin or viewer token")
		}
	case osvcv1.Role_ROLE_OPERATOR:
		if len(sites) == 0 {
			return nil, "", errdefs.InvalidArgument("sites", "an operator token needs the sites it operates, e.g. --site PS1")
		}
		if len(sites) > maxSites {
			return nil, "", errdefs.InvalidArgument("sites", fmt.Sprintf("%d sites, over the limit of %d", len(sites), maxSites))
		}
		for _, s := range sites {
			if err := names.ValidateSite(s); err != nil {
				return nil, "", errdefs.InvalidArgument("sites", err.Error())
			}
		}
		slices.Sort(sites)
		sites = slices.Compact(sites)
	default:
		return nil, "", errdefs.InvalidArgument("role", "want admin, operator or viewer (agents enroll with a join token)")
	}
	if len(req.GetDescription()) > maxDescriptionLen {
		return nil, "", errdefs.InvalidArgument("description", fmt.Sprintf("%d bytes, over the limit of %d", len(req.GetDescription()), maxDescriptionLen))
	}
	now := a.now()
	tok := &osvcv1.Token{Role: role, Sites: sites, Description: req.GetDescription(), CreateTime: timestamppb.New(now), CreatedBy: by}
	if ttl := req.GetTtl(); ttl != nil {
		if err := ttl.CheckValid(); err != nil || ttl.AsDuration() < 0 {
			return nil, "", errdefs.InvalidArgument("ttl", "want a positive duration, e.g. 720h, or none for a token that does not expire")
		}
		if d := ttl.AsDuration(); d > 0 {
			tok.ExpireTime = timestamppb.New(now.Add(d))
		}
	}
	resp, err := a.st.Client().Get(ctx, a.tokensPrefix(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return nil, "", fmt.Errorf("count tokens: %w", err)
	}
	if resp.Count >= MaxTokens {
		return nil, "", errdefs.Newf(errdefs.ErrResourceExhausted, "%d tokens exist, the limit; revoke unused ones with osvcctl token revoke", resp.Count)
	}
	id, text, sum := newSecret(kindToken)
	tok.Id = id
	if _, err := a.st.Create(ctx, a.tokenKey(id), &storev1.StoredToken{Token: tok, SecretSha256: sum}); err != nil {
		return nil, "", err
	}
	return tok, text, nil
}

// ListTokens lists the tokens, oldest first, without their secrets.
func (a *Access) ListTokens(ctx context.Context) ([]*osvcv1.Token, error) {
	var out []*osvcv1.Token
	for page := ""; ; {
		stored, next, err := store.List[*storev1.StoredToken](ctx, a.st, a.tokensPrefix(), MaxTokens, page)
		if err != nil {
			return nil, err
		}
		for _, s := range stored {
			out = append(out, s.GetToken())
		}
		if page = next; page == "" {
			break
		}
	}
	slices.SortFunc(out, func(x, y *osvcv1.Token) int {
		return x.GetCreateTime().AsTime().Compare(y.GetCreateTime().AsTime())
	})
	return out, nil
}

// RevokeToken deletes the token id.
func (a *Access) RevokeToken(ctx context.Context, id string) error {
	if len(id) != idLen {
		return errdefs.InvalidArgument("id", "want the token's 16-character id as osvcctl token list shows it")
	}
	_, err := a.st.Delete(ctx, a.tokenKey(id))
	if errors.Is(err, errdefs.ErrNotFound) {
		return errdefs.Newf(errdefs.ErrNotFound, "token %s does not exist", names.Quote(id))
	}
	return err
}

// errBadCredential is what every failed authentication says: which part
// failed is not told to the caller.
var errBadCredential = errdefs.Newf(errdefs.ErrUnauthenticated, "the token is not valid: it is malformed, revoked, expired or unknown; get a new one from an admin (osvcctl token create)")

// AuthenticateToken returns the principal of a bearer token.
func (a *Access) AuthenticateToken(ctx context.Context, text string) (*Principal, error) {
	id, sum, err := parseSecret(kindToken, text)
	if err != nil {
		return nil, errBadCredential
	}
	st, _, err := store.Get[*storev1.StoredToken](ctx, a.st, a.tokenKey(id))
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil, errBadCredential
	}
	if err != nil {
		return nil, errdefs.Newf(errdefs.ErrUnavailable, "checking the token: %v", err)
	}
	if !sameSum(st.GetSecretSha256(), sum) {
		return nil, errBadCredential
	}
	tok := st.GetToken()
	if exp := tok.GetExpireTime(); exp != nil && !a.now().Before(exp.AsTime()) {
		return nil, errBadCredential
	}
	return &Principal{ID: tokenPrincipal(id), Role: tok.GetRole(), Sites: tok.GetSites()}, nil
}

// Bootstrap makes the first admin token once per installation and writes
// it to dir/admin.token (0600). It returns the file's path when it made
// one, "" when the installation already had its first token.
func (a *Access) Bootstrap(ctx context.Context, dir string) (string, error) {
	resp, err := a.st.Client().Get(ctx, a.bootstrapKey())
	if err != nil {
		return "", fmt.Errorf("first admin token: %w", err)
	}
	if len(resp.Kvs) > 0 {
		return "", nil
	}
	tok, text, err := a.CreateToken(ctx, "osvc-server", &osvcv1.CreateTokenRequest{Role: osvcv1.Role_ROLE_ADMIN, Description: "first admin token, " + AdminTokenFile})
	if err != nil {
		return "", fmt.Errorf("first admin token: %w", err)
	}
	// The secret is on disk (a private temporary file) before the token
	// counts as the installation's first: a write that fails leaves no
	// admin token nobody knows, and the next start tries again.
	tmp, err := writePrivate(dir, text+"\n")
	if err != nil {
		_, _ = a.st.Delete(context.WithoutCancel(ctx), a.tokenKey(tok.GetId()))
		return "", fmt.Errorf("first admin token: %w", err)
	}
	defer os.Remove(tmp)
	// Only one replica's token survives: the others revoke theirs.
	txn, err := a.st.Client().Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(a.bootstrapKey()), "=", 0)).
		Then(clientv3.OpPut(a.bootstrapKey(), tok.GetId())).
		Else(clientv3.OpDelete(a.tokenKey(tok.GetId()))).
		Commit()
	if err != nil {
		return "", fmt.Errorf("first admin token: %w", err)
	}
	if !txn.Succeeded {
		return "", nil
	}
	path := filepath.Join(dir, AdminTokenFile)
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("first admin token: %w; the token is in etcd but not on disk: make another with osvc-server's data directory restored, or revoke it", err)
	}
	return path, nil
}

// writePrivate writes data to a new file in dir (made 0700) readable by
// its owner only, synced, and returns its path.
func writePrivate(dir, data string) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	f, err := os.CreateTemp(dir, "."+AdminTokenFile+"-*")
	if err != nil {
		return "", err
	}
	if err := f.Chmod(0o600); err != nil && runtime.GOOS != "windows" {
		f.Close()
		os.Remove(f.Name())
		return "", err
	}
	if _, err := f.WriteString(data); err != nil {
		f.Close()
		os.Remove(f.Name())
		return "", err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(f.Name())
		return "", err
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// CreateJoinToken makes a join token for site.
func (a *Access) CreateJoinToken(ctx context.Context, by string, req *osvcv1.CreateJoinTokenRequest) (string, *storev1.JoinToken, error) {
	if err := names.ValidateSite(req.GetSite()); err != nil {
		return "", nil, errdefs.InvalidArgument("site", err.Error())
	}
	ttl := DefaultJoinTokenTTL
	if d := req.GetTtl(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() <= 0 || d.AsDuration() > MaxJoinTokenTTL {
			return "", nil, errdefs.InvalidArgument("ttl", fmt.Sprintf("want a duration above 0 and at most %s, e.g. 1h", MaxJoinTokenTTL))
		}
		ttl = d.AsDuration()
	}
	uses := req.GetUses()
	switch {
	case uses == 0:
		uses = 1
	case uses < 0 || uses > MaxJoinTokenUses:
		return "", nil, errdefs.InvalidArgument("uses", fmt.Sprintf("want 1 to %d agents that may enroll with it", MaxJoinTokenUses))
	}
	now := a.now()
	id, text, sum := newSecret(kindJoin)
	jt := &storev1.JoinToken{
		Id: id, Site: req.GetSite(), SecretSha256: sum, UsesLeft: uses,
		ExpireTime: timestamppb.New(now.Add(ttl)), CreatedBy: by, CreateTime: timestamppb.New(now),
	}
	// The key lives on an etcd lease, so an unused token does not linger.
	lease, err := a.st.Client().Grant(ctx, int64(ttl/time.Second)+1)
	if err != nil {
		return "", nil, fmt.Errorf("join token: %w", err)
	}
	key := a.joinKey(id)
	_, err = a.st.Txn(ctx, "create join token", func(tx *store.Tx) error {
		if err := sites.Reference(tx, jt.GetSite(), "join-tokens/"+id); err != nil {
			return err
		}
		if _, exists, err := tx.Raw(key); err != nil {
			return err
		} else if exists {
			return fmt.Errorf("join token %s: already exists: %w", id, errdefs.ErrConflict)
		}
		return tx.Put(key, jt, clientv3.WithLease(lease.ID))
	})
	if err != nil {
		_, _ = a.st.Client().Revoke(context.WithoutCancel(ctx), lease.ID)
		return "", nil, err
	}
	return text, jt, nil
}

// ListJoinTokens lists the join tokens still usable, oldest first,
// without their secrets.
func (a *Access) ListJoinTokens(ctx context.Context) ([]*osvcv1.JoinToken, error) {
	var out []*osvcv1.JoinToken
	for page := ""; ; {
		stored, next, err := store.List[*storev1.JoinToken](ctx, a.st, a.st.JoinTokensPrefix(), 1000, page)
		if err != nil {
			return nil, err
		}
		for _, jt := range stored {
			out = append(out, &osvcv1.JoinToken{Id: jt.GetId(), Site: jt.GetSite(), UsesLeft: jt.GetUsesLeft(),
				ExpireTime: jt.GetExpireTime(), CreateTime: jt.GetCreateTime(), CreatedBy: jt.GetCreatedBy()})
		}
		if page = next; page == "" {
			break
		}
	}
	slices.SortFunc(out, func(x, y *osvcv1.JoinToken) int {
		return x.GetCreateTime().AsTime().Compare(y.GetCreateTime().AsTime())
	})
	return out, nil
}

// RevokeJoinToken deletes the join token id: no agent enrolls with it any more.
func (a *Access) RevokeJoinToken(ctx context.Context, id string) error {
	if len(id) != idLen {
		return errdefs.InvalidArgument("id", "want the join token's 16-character id as osvcctl agent token list shows it")
	}
	_, err := a.st.Delete(ctx, a.joinKey(id))
	if errors.Is(err, errdefs.ErrNotFound) {
		return errdefs.Newf(errdefs.ErrNotFound, "join token %s does not exist (used up, expired or revoked)", names.Quote(id))
	}
	return err
}

// errBadJoinToken is what every failed enrollment by token says.
var errBadJoinToken = errdefs.Newf(errdefs.ErrUnauthenticated, "the join token is not valid: it is malformed, used up, expired or revoked; ask an admin for a new one (osvcctl agent token create --site SITE)")

// Enroll trades a join token and a certificate request for a certificate.
// The token's use is spent and the identity recorded in one transaction:
// two agents racing with a single-use token cannot both enroll.
func (a *Access) Enroll(ctx context.Context, joinToken string, csrPEM []byte) (*osvcv1.EnrollResponse, string, error) {
	id, sum, err := parseSecret(kindJoin, joinToken)
	if err != nil {
		return nil, "", errBadJoinToken
	}
	csr, err := pki.ParseCSR(csrPEM)
	if err != nil {
		return nil, joinPrincipal(id), errdefs.InvalidArgument("csr", err.Error())
	}
	var resp *osvcv1.EnrollResponse
	_, err = a.st.Txn(ctx, "enroll", func(tx *store.Tx) error {
		jt, err := store.Load[*storev1.JoinToken](tx, a.joinKey(id))
		if errors.Is(err, errdefs.ErrNotFound) {
			return errBadJoinToken
		} else if err != nil {
			return err
		}
		now := a.now()
		if !sameSum(jt.GetSecretSha256(), sum) || jt.GetUsesLeft() <= 0 || !now.Before(jt.GetExpireTime().AsTime()) {
			return errBadJoinToken
		}
		agentID := pki.AgentID{Site: jt.GetSite(), Name: csr.Subject.CommonName}
		if err := agentID.Validate(); err != nil {
			return errdefs.InvalidArgument("csr", "the request's common name is the agent's name: "+err.Error())
		}
		if err := sites.Reference(tx, agentID.Site, "agents/"+agentID.Name); err != nil {
			return err
		}
		prev, err := store.Load[*storev1.AgentIdentity](tx, a.identityKey(agentID.Name))
		switch {
		case errors.Is(err, errdefs.ErrNotFound):
		case err != nil:
			return err
		case !prev.GetRevoked():
			return errdefs.Newf(errdefs.ErrConflict, "agent %s is already enrolled (site %s); to enroll it again, revoke it first: osvcctl agent revoke %s", agentID.Name, prev.GetSite(), agentID.Name)
		}
		cert, certPEM, err := a.ca.IssueAgentCertificate(csr, agentID, a.agentValidity, now)
		if err != nil {
			return err
		}
		if jt.UsesLeft--; jt.UsesLeft == 0 {
			tx.Delete(a.joinKey(id))
		} else {
			lease, err := tx.LeaseOf(a.joinKey(id))
			if err != nil {
				return err
			}
			if err := tx.Put(a.joinKey(id), jt, clientv3.WithLease(clientv3.LeaseID(lease))); err != nil {
				return err
			}
		}
		if err := tx.Put(a.identityKey(agentID.Name), &storev1.AgentIdentity{
			Name: agentID.Name, Site: agentID.Site, Serials: []string{pki.SerialHex(cert)}, EnrollTime: timestamppb.New(now),
		}); err != nil {
			return err
		}
		resp = &osvcv1.EnrollResponse{Certificate: certPEM, CaCertificate: a.ca.CertPEM, Site: agentID.Site, Name: agentID.Name}
		return nil
	})
	return resp, joinPrincipal(id), err
}

// Renew issues the calling agent a certificate for the key of csrPEM. The
// caller's certificate stays valid beside the new one until it expires;
// older ones are dropped.
func (a *Access) Renew(ctx context.Context, p *Principal, csrPEM []byte) ([]byte, error) {
	if p.Role != osvcv1.Role_ROLE_AGENT {
		return nil, errdefs.Newf(errdefs.ErrPermissionDenied, "only an agent renews its certificate")
	}
	csr, err := pki.ParseCSR(csrPEM)
	if err != nil {
		return nil, errdefs.InvalidArgument("csr", err.Error())
	}
	if csr.Subject.CommonName != p.Agent {
		return nil, errdefs.InvalidArgument("csr", fmt.Sprintf("the request names %s; an agent renews only its own certificate (%s)", names.Quote(csr.Subject.CommonName), p.Agent))
	}
	var certPEM []byte
	_, err = a.st.Txn(ctx, "renew", func(tx *store.Tx) error {
		ident, err := store.Load[*storev1.AgentIdentity](tx, a.identityKey(p.Agent))
		if err != nil {
			return err
		}
		if ident.GetRevoked() || !slices.Contains(ident.GetSerials(), p.Serial) {
			return errdefs.Newf(errdefs.ErrUnauthenticated, "agent %s: this certificate is no longer valid", p.Agent)
		}
		cert, out, err := a.ca.IssueAgentCertificate(csr, pki.AgentID{Site: ident.GetSite(), Name: ident.GetName()}, a.agentValidity, a.now())
		if err != nil {
			return err
		}
		ident.Serials = []string{p.Serial, pki.SerialHex(cert)}
		certPEM = out
		return tx.Put(a.identityKey(p.Agent), ident)
	})
	return certPEM, err
}

// RevokeAgent refuses every certificate of the agent from now on.
func (a *Access) RevokeAgent(ctx context.Context, by, name, reason string) error {
	if err := names.ValidateID(name); err != nil {
		return errdefs.InvalidArgument("name", err.Error())
	}
	_, err := a.st.Txn(ctx, "revoke agent "+name, func(tx *store.Tx) error {
		return a.RevokeAgentWithin(tx, by, name, reason)
	})
	return err
}

// RevokeAgentWithin revokes the agent within tx, as RevokeAgent does: for
// a caller that removes the agent in the same transaction. An agent never
// enrolled is ErrNotFound.
func (a *Access) RevokeAgentWithin(tx *store.Tx, by, name, reason string) error {
	id, err := store.Load[*storev1.AgentIdentity](tx, a.identityKey(name))
	if errors.Is(err, errdefs.ErrNotFound) {
		return errdefs.Newf(errdefs.ErrNotFound, "agent %s was never enrolled", names.Quote(name))
	}
	if err != nil {
		return err
	}
	id.Revoked, id.Serials = true, nil
	id.RevokeTime, id.RevokedBy, id.RevokeReason = timestamppb.New(a.now()), by, reason
	return tx.Put(a.identityKey(name), id)
}

// AuthenticateAgent returns the principal of a verified agent certificate,
// refusing one whose identity is revoked or whose serial the server no
// longer accepts (superseded by a renewal, or from before a revocation).
func (a *Access) AuthenticateAgent(ctx context.Context, cert *x509.Certificate) (*Principal, error) {
	id, err := pki.AgentFromCert(cert)
	if err != nil {
		return nil, errdefs.Newf(errdefs.ErrUnauthenticated, "client certificate: %v", err)
	}
	if !a.now().Before(cert.NotAfter) {
		return nil, errdefs.Newf(errdefs.ErrUnauthenticated, "agent %s: the certificate expired at %s; enroll again with a new join token", id.Name, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	ident, _, err := store.Get[*storev1.AgentIdentity](ctx, a.st, a.identityKey(id.Name))
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil, errdefs.Newf(errdefs.ErrUnauthenticated, "agent %s is not enrolled; enroll it with a join token", id.Name)
	}
	if err != nil {
		return nil, errdefs.Newf(errdefs.ErrUnavailable, "checking the agent's certificate: %v", err)
	}
	serial := pki.SerialHex(cert)
	switch {
	case ident.GetRevoked():
		return nil, errdefs.Newf(errdefs.ErrUnauthenticated, "agent %s is revoked; enroll it again with a new join token", id.Name)
	case ident.GetSite() != id.Site || !slices.Contains(ident.GetSerials(), serial):
		return nil, errdefs.Newf(errdefs.ErrUnauthenticated, "agent %s: this certificate is no longer valid (renewed or revoked); enroll again with a new join token", id.Name)
	}
	return &Principal{ID: id.String(), Role: osvcv1.Role_ROLE_AGENT, Sites: []string{id.Site}, Agent: id.Name, Serial: serial, NotAfter: cert.NotAfter}, nil
}

// WatchRevocations calls revoked with the name of each agent whose
// identity changes to revoked, or whose accepted serials change, until ctx
// ends; serials are the ones accepted now.
func (a *Access) WatchRevocations(ctx context.Context, changed func(name string, revoked bool, serials []string)) error {
	for wr := range a.st.Client().Watch(clientv3.WithRequireLeader(ctx), a.identitiesPrefix(), clientv3.WithPrefix()) {
		if err := wr.Err(); err != nil {
			return err
		}
		for _, ev := range wr.Events {
			name := strings.TrimPrefix(string(ev.Kv.Key), a.identitiesPrefix())
			if ev.Type == clientv3.EventTypeDelete {
				changed(name, true, nil)
				continue
			}
			ident, err := store.Unmarshal[*storev1.AgentIdentity](ev.Kv.Value)
			if err != nil {
				changed(name, true, nil)
				continue
			}
			changed(name, ident.GetRevoked(), ident.GetSerials())
		}
	}
	return ctx.Err()
}
