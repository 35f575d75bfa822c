// Package sites keeps the sites of the hierarchy, sites/{code}: a central
// site, primary sites under it and secondary sites under those, each with
// the offline servicing drive its agents use and its distribution points.
//
// Images, agents and join tokens name their site by its code, and that site
// must exist. A write that makes something name a site calls Reference (or,
// to only check, Require) in its own transaction; a site is deleted only
// while nothing names it, and the two meet in etcd (see Reference and
// Delete), so an import racing a delete either lands in a site that stays or
// is refused.
package sites

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	storev1 "github.com/osvc/osvc/gen/osvc/store/v1"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/drivesetting"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/names"
	"github.com/osvc/osvc/server/store"
)

const collection = "sites/"

// Limits of what a site holds.
const (
	// MaxDistributionPoints bounds a site's distribution points.
	MaxDistributionPoints = 100
	// MaxDescriptionLen bounds a site's description.
	MaxDescriptionLen = 1024
	// maxDepth bounds a walk up the hierarchy: it is three sites deep
	// (central, primary, secondary); a longer chain is damaged data.
	maxDepth = 64
)

// Name returns sites/{code}.
func Name(code string) string { return collection + code }

// Code returns the code of sites/{code}; InvalidArgument("name") on a bad name.
func Code(name string) (string, error) {
	code, ok := strings.CutPrefix(name, collection)
	if !ok {
		return "", errdefs.InvalidArgument("name", "want "+collection+"{code}, e.g. sites/PS1, got "+names.Quote(name))
	}
	if err := names.ValidateSite(code); err != nil {
		return "", errdefs.InvalidArgument("name", err.Error())
	}
	return code, nil
}

// Config configures a Registry.
type Config struct {
	Store  *store.Store
	Logger hclog.Logger
	// Now is the clock of create and update times; time.Now when nil.
	Now func() time.Time
}

// Registry reads and writes the sites.
type Registry struct {
	store  *store.Store
	logger hclog.Logger
	now    func() time.Time
}

// New validates cfg and returns a Registry.
func New(cfg Config) (*Registry, error) {
	if cfg.Store == nil {
		return nil, errors.New("sites: Config.Store is required")
	}
	r := &Registry{store: cfg.Store, logger: cfg.Logger, now: cfg.Now}
	if r.logger == nil {
		r.logger = hclog.NewNullLogger()
	}
	r.logger = r.logger.Named("sites")
	if r.now == nil {
		r.now = time.Now
	}
	return r, nil
}

// notFound is the error for a site asked for that does not exist.
func notFound(code string) error {
	return errdefs.Newf(errdefs.ErrNotFound, "site %s does not exist; 'osvcctl site list' lists the sites", code)
}

// missing is the error for a site named that does not exist: what names it
// cannot be written.
func missing(code string) error {
	return errdefs.Newf(errdefs.ErrFailedPrecondition, "site %s does not exist: create it with: osvcctl site create %s", code, code)
}

// Require reads site code within tx and returns it. The site's key joins
// the transaction's read set, so a site deleted before tx commits makes tx
// read again and fail here. A site that does not exist is
// ErrFailedPrecondition saying how to create it.
func Require(tx *store.Tx, code string) (*osvcv1.Site, error) {
	if err := names.ValidateSite(code); err != nil {
		return nil, errdefs.InvalidArgument("site", err.Error())
	}
	site, err := store.Load[*osvcv1.Site](tx, tx.Store().SiteKey(code))
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil, missing(code)
	}
	return site, err
}

// Reference is Require for a write that makes resource name site code (an
// image imported into it, a join token or an agent enrolled for it, a site
// placed under it): it also puts the site's references key. Delete compares
// that key's revision when it commits, so a reference it did not see when it
// looked makes it look again instead of deleting a site still named.
func Reference(tx *store.Tx, code, resource string) error {
	if _, err := Require(tx, code); err != nil {
		return err
	}
	return tx.Put(tx.Store().SiteReferencesKey(code), &storev1.SiteReferences{Last: resource})
}

// Lookup returns site code, ErrNotFound when there is none.
func Lookup(ctx context.Context, st *store.Store, code string) (*osvcv1.Site, error) {
	site, _, err := store.Get[*osvcv1.Site](ctx, st, st.SiteKey(code))
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil, notFound(code)
	}
	if err != nil {
		return nil, fmt.Errorf("get site %s: %w", code, err)
	}
	return site, nil
}

// Create records a new site; its code names it. A taken code is
// ErrConflict; a parent that does not exist is ErrFailedPrecondition.
func (r *Registry) Create(ctx context.Context, in *osvcv1.Site) (*osvcv1.Site, error) {
	if err := names.ValidateSite(in.GetCode()); err != nil {
		return nil, errdefs.InvalidArgument("site.code", err.Error())
	}
	site := &osvcv1.Site{Name: Name(in.GetCode()), Code: in.GetCode()}
	for _, f := range fields {
		if err := f.set(site, in); err != nil {
			return nil, err
		}
	}
	now := timestamppb.New(r.now())
	site.CreateTime, site.UpdateTime = now, now
	key := r.store.SiteKey(site.GetCode())
	_, err := r.store.Txn(ctx, "create "+site.GetName(), func(tx *store.Tx) error {
		if _, exists, err := tx.Raw(key); err != nil {
			return err
		} else if exists {
			return errdefs.Newf(errdefs.ErrConflict, "site %s already exists; 'osvcctl site get %s' shows it", site.GetCode(), site.GetCode())
		}
		if p := site.GetParentSite(); p != "" {
			if err := Reference(tx, p, site.GetName()); err != nil {
				return fmt.Errorf("parent_site: %w", err)
			}
		}
		return tx.Put(key, site)
	})
	if err != nil {
		return nil, fmt.Errorf("create site %s: %w", site.GetCode(), err)
	}
	r.logger.Info("site created", "site", site.GetCode(), "parent", site.GetParentSite(), "drive", site.GetOfflineServicingDrive())
	return site, nil
}

// Get returns the site named sites/{code}.
func (r *Registry) Get(ctx context.Context, name string) (*osvcv1.Site, error) {
	code, err := Code(name)
	if err != nil {
		return nil, err
	}
	return Lookup(ctx, r.store, code)
}

// List lists the sites in code order.
func (r *Registry) List(ctx context.Context, pageSize int, token string) ([]*osvcv1.Site, string, error) {
	return store.List[*osvcv1.Site](ctx, r.store, r.store.SitesPrefix(), pageSize, token)
}

// field is one field of a site that Create sets and Update may change: its
// name in an update mask, whether it is set in a request, and how it is
// validated and copied from the request.
type field struct {
	path  string
	isSet func(in *osvcv1.Site) bool
	set   func(site, in *osvcv1.Site) error
}

var fields = []field{
	{"parent_site", func(in *osvcv1.Site) bool { return in.GetParentSite() != "" }, func(site, in *osvcv1.Site) error {
		if p := in.GetParentSite(); p != "" {
			if err := names.ValidateSite(p); err != nil {
				return errdefs.InvalidArgument("site.parent_site", err.Error())
			}
			if p == site.GetCode() {
				return errdefs.InvalidArgument("site.parent_site", fmt.Sprintf("site %s cannot be its own parent", p))
			}
		}
		site.ParentSite = in.GetParentSite()
		return nil
	}},
	{"description", func(in *osvcv1.Site) bool { return in.GetDescription() != "" }, func(site, in *osvcv1.Site) error {
		if n := len(in.GetDescription()); n > MaxDescriptionLen {
			return errdefs.InvalidArgument("site.description", fmt.Sprintf("%d bytes, over the limit of %d", n, MaxDescriptionLen))
		}
		site.Description = in.GetDescription()
		return nil
	}},
	{"offline_servicing_drive", func(in *osvcv1.Site) bool { return in.GetOfflineServicingDrive() != "" }, func(site, in *osvcv1.Site) error {
		d, err := drivesetting.Validate(in.GetOfflineServicingDrive())
		if err != nil {
			return errdefs.InvalidArgument("site.offline_servicing_drive", err.Error())
		}
		site.OfflineServicingDrive = d
		return nil
	}},
	{"distribution_points", func(in *osvcv1.Site) bool { return len(in.GetDistributionPoints()) > 0 }, func(site, in *osvcv1.Site) error {
		dps := in.GetDistributionPoints()
		if len(dps) > MaxDistributionPoints {
			return errdefs.InvalidArgument("site.distribution_points", fmt.Sprintf("%d agents, over the limit of %d", len(dps), MaxDistributionPoints))
		}
		for i, dp := range dps {
			if err := names.ValidateID(dp); err != nil {
				return errdefs.InvalidArgument("site.distribution_points", fmt.Sprintf("%s: give the agent's name (its --name): %v", names.Quote(dp), err))
			}
			if slices.Contains(dps[:i], dp) {
				return errdefs.InvalidArgument("site.distribution_points", fmt.Sprintf("%s is named twice", dp))
			}
		}
		site.DistributionPoints = slices.Clone(dps)
		return nil
	}},
}

// Update changes the fields of in.name's site (in.code's when in.name is
// empty) that paths name, or without paths those set in in. A parent that
// does not exist is ErrFailedPrecondition, and so is one under the site
// itself: the error names the chain the change would close.
func (r *Registry) Update(ctx context.Context, in *osvcv1.Site, paths []string) (*osvcv1.Site, error) {
	code := in.GetCode()
	if in.GetName() != "" {
		c, err := Code(in.GetName())
		if err != nil {
			return nil, errdefs.InvalidArgument("site.name", err.Error())
		}
		if code != "" && code != c {
			return nil, errdefs.InvalidArgument("site.code", fmt.Sprintf("%s is not the code of %s: a site's code cannot change", code, in.GetName()))
		}
		code = c
	} else if err := names.ValidateSite(code); err != nil {
		return nil, errdefs.InvalidArgument("site.name", "name the site to update: "+err.Error())
	}
	changes, err := changed(in, paths)
	if err != nil {
		return nil, err
	}
	key := r.store.SiteKey(code)
	var out *osvcv1.Site
	_, err = r.store.Txn(ctx, "update "+Name(code), func(tx *store.Tx) error {
		site, err := store.Load[*osvcv1.Site](tx, key)
		if errors.Is(err, errdefs.ErrNotFound) {
			return notFound(code)
		}
		if err != nil {
			return err
		}
		oldParent := site.GetParentSite()
		for _, f := range changes {
			if err := f.set(site, in); err != nil {
				return err
			}
		}
		if p := site.GetParentSite(); p != "" && p != oldParent {
			if err := underItself(tx, code, p); err != nil {
				return err
			}
			if err := Reference(tx, p, site.GetName()); err != nil {
				return fmt.Errorf("parent_site: %w", err)
			}
		}
		site.UpdateTime = timestamppb.New(r.now())
		out = site
		return tx.Put(key, site)
	})
	if err != nil {
		return nil, fmt.Errorf("update site %s: %w", code, err)
	}
	r.logger.Info("site updated", "site", code, "fields", paths, "parent", out.GetParentSite(), "drive", out.GetOfflineServicingDrive())
	return out, nil
}

// changed returns the fields an update changes: those paths names, or
// without paths those set in in.
func changed(in *osvcv1.Site, paths []string) ([]field, error) {
	var out []field
	for _, f := range fields {
		if len(paths) == 0 && f.isSet(in) || slices.Contains(paths, f.path) {
			out = append(out, f)
		}
	}
	for _, p := range paths {
		if !slices.ContainsFunc(fields, func(f field) bool { return f.path == p }) {
			return nil, errdefs.InvalidArgument("update_mask", fmt.Sprintf("%s cannot be updated; a site's updatable fields are parent_site, description, offline_servicing_drive and distribution_points", names.Quote(p)))
		}
	}
	if len(out) == 0 {
		return nil, errdefs.InvalidArgument("update_mask", "nothing to update: set a field, or name the fields to change (to clear one, name it and leave it empty)")
	}
	return out, nil
}

// underItself refuses parent as the parent of code when parent is code or
// one of its descendants: walking up from parent reaches code. Every site
// on the way joins tx's read set, so a concurrent change of the chain
// makes tx walk it again.
func underItself(tx *store.Tx, code, parent string) error {
	chain := []string{code, parent}
	for p := parent; p != ""; {
		if p == code {
			return errdefs.Newf(errdefs.ErrFailedPrecondition, "site %s cannot be placed under %s, which is below it: that would make a cycle, %s",
				code, parent, strings.Join(chain, " → "))
		}
		if len(chain) > maxDepth {
			return errdefs.Newf(errdefs.ErrFailedPrecondition, "the sites above %s are more than %d deep: %s ...", parent, maxDepth, strings.Join(chain[:8], " → "))
		}
		site, err := Require(tx, p)
		if err != nil {
			return fmt.Errorf("parent_site: %w", err)
		}
		p = site.GetParentSite()
		if p != "" {
			chain = append(chain, p)
		}
	}
	return nil
}

// Delete deletes the site named sites/{code} when nothing names it: no
// image, no enrolled agent (unless revoked), no join token and no child
// site; otherwise ErrFailedPrecondition says which and how many.
//
// It reads the site and its references key, then looks for what names the
// site, and deletes both keys in a transaction that compares what it read.
// A write that makes something name the site puts the references key
// (Reference): one that commits before the look is seen by it, one that
// commits between the look and the delete fails the delete's compare (the
// delete looks again), and one that comes after finds no site.
func (r *Registry) Delete(ctx context.Context, name string) error {
	code, err := Code(name)
	if err != nil {
		return err
	}
	key, refs := r.store.SiteKey(code), r.store.SiteReferencesKey(code)
	_, err = r.store.Txn(ctx, "delete "+name, func(tx *store.Tx) error {
		if _, exists, err := tx.Raw(key); err != nil {
			return err
		} else if !exists {
			return notFound(code)
		}
		if _, err := tx.Revision(refs); err != nil {
			return err
		}
		var named namedBy
		if err := visitReferences(tx.Context(), r.store, r.now(), func(ref reference) {
			if ref.site == code && ref.keepsSite() {
				named.add(ref)
			}
		}); err != nil {
			return fmt.Errorf("look for what names site %s: %w", code, err)
		}
		if !named.empty() {
			return errdefs.Newf(errdefs.ErrFailedPrecondition, "site %s cannot be deleted: %s name it; %s", code, named, named.advice())
		}
		tx.Delete(key)
		tx.Delete(refs)
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete site %s: %w", code, err)
	}
	r.logger.Info("site deleted", "site", code)
	return nil
}

// RecordNamed records, without a parent and on the Automatic drive, every
// site that stored data names (an image, an agent's record or identity, a
// join token) but that has no record: data written before sites were
// resources. It returns the codes of the sites it created, in order.
func (r *Registry) RecordNamed(ctx context.Context) ([]string, error) {
	seen := map[string]bool{}
	err := visitReferences(ctx, r.store, r.now(), func(ref reference) {
		if ref.kind != childSite && names.ValidateSite(ref.site) == nil {
			seen[ref.site] = true
		}
	})
	if err != nil {
		return nil, fmt.Errorf("look for the sites stored data names: %w", err)
	}
	var created []string
	for _, code := range slices.Sorted(maps.Keys(seen)) {
		now := timestamppb.New(r.now())
		site := &osvcv1.Site{
			Name: Name(code), Code: code, OfflineServicingDrive: drivesetting.Automatic,
			Description: "recorded from the images and agents that named it before sites were resources",
			CreateTime:  now, UpdateTime: now,
		}
		rev, err := r.store.Txn(ctx, "record "+site.GetName(), func(tx *store.Tx) error {
			if _, exists, err := tx.Raw(r.store.SiteKey(code)); err != nil || exists {
				return err
			}
			return tx.Put(r.store.SiteKey(code), site)
		})
		if err != nil {
			return created, fmt.Errorf("record site %s: %w", code, err)
		}
		if rev != 0 {
			created = append(created, code)
		}
	}
	return created, nil
}

// kind is what names a site.
type kind int

const (
	image kind = iota
	enrolledAgent
	joinToken
	childSite
	// agentRecord is an agent's record (agents/{name}), written when it
	// connects: its identity, not its record, keeps its site.
	agentRecord
)

// reference is one stored thing that names a site.
type reference struct {
	kind     kind
	site     string
	resource string
	// spent marks what names the site but no longer uses it: a revoked
	// agent, a join token past its expiry (its key goes with its lease).
	spent bool
}

// keepsSite tells whether the reference keeps its site from being deleted.
func (r reference) keepsSite() bool { return !r.spent && r.kind != agentRecord }

// visitReferences calls visit with everything stored that names a site.
func visitReferences(ctx context.Context, st *store.Store, now time.Time, visit func(reference)) error {
	if err := visitAll(ctx, st, st.ImagesPrefix(), func(img *osvcv1.Image) {
		visit(reference{kind: image, site: img.GetSite(), resource: img.GetName()})
	}); err != nil {
		return err
	}
	if err := visitAll(ctx, st, st.AgentIdentitiesPrefix(), func(id *storev1.AgentIdentity) {
		visit(reference{kind: enrolledAgent, site: id.GetSite(), resource: "agents/" + id.GetName(), spent: id.GetRevoked()})
	}); err != nil {
		return err
	}
	if err := visitAll(ctx, st, st.JoinTokensPrefix(), func(jt *storev1.JoinToken) {
		visit(reference{kind: joinToken, site: jt.GetSite(), resource: "join-tokens/" + jt.GetId(),
			spent: jt.GetUsesLeft() <= 0 || !now.Before(jt.GetExpireTime().AsTime())})
	}); err != nil {
		return err
	}
	if err := visitAll(ctx, st, st.SitesPrefix(), func(s *osvcv1.Site) {
		if s.GetParentSite() != "" {
			visit(reference{kind: childSite, site: s.GetParentSite(), resource: s.GetName()})
		}
	}); err != nil {
		return err
	}
	return visitAll(ctx, st, st.AgentsPrefix(), func(a *osvcv1.Agent) {
		visit(reference{kind: agentRecord, site: a.GetSite(), resource: a.GetName()})
	})
}

// visitAll calls visit with every value under prefix, a page at a time.
func visitAll[T proto.Message](ctx context.Context, st *store.Store, prefix string, visit func(T)) error {
	for token := ""; ; {
		page, next, err := store.List[T](ctx, st, prefix, 1000, token)
		if err != nil {
			return err
		}
		for _, v := range page {
			visit(v)
		}
		if token = next; token == "" {
			return nil
		}
	}
}

// namedBy gathers what names a site, by kind.
type namedBy struct {
	byKind [agentRecord][]string
}

func (n *namedBy) add(r reference) { n.byKind[r.kind] = append(n.byKind[r.kind], r.resource) }

func (n namedBy) empty() bool {
	for _, rs := range n.byKind {
		if len(rs) > 0 {
			return false
		}
	}
	return true
}

// String says how many of each kind and names the first few:
// "2 images (images/a, images/b) and 1 child site (sites/PS2)".
func (n namedBy) String() string {
	nouns := [agentRecord][2]string{
		image: {"image", "images"}, enrolledAgent: {"enrolled agent", "enrolled agents"},
		joinToken: {"join token", "join tokens"}, childSite: {"child site", "child sites"},
	}
	const shown = 5
	var parts []string
	for k, rs := range n.byKind {
		if len(rs) == 0 {
			continue
		}
		noun := nouns[k][1]
		if len(rs) == 1 {
			noun = nouns[k][0]
		}
		list := strings.Join(rs[:min(len(rs), shown)], ", ")
		if len(rs) > shown {
			list += ", ..."
		}
		parts = append(parts, fmt.Sprintf("%d %s (%s)", len(rs), noun, list))
	}
	if len(parts) == 1 {
		return parts[0]
	}
	return strings.Join(parts[:len(parts)-1], ", ") + " and " + parts[len(parts)-1]
}

// advice says how to remove what keeps the site.
func (n namedBy) advice() string {
	var do []string
	if len(n.byKind[enrolledAgent]) > 0 {
		do = append(do, "revoke its agents (osvcctl agent revoke NAME)")
	}
	if len(n.byKind[joinToken]) > 0 {
		do = append(do, "revoke its join tokens (osvcctl agent token revoke ID)")
	}
	if len(n.byKind[childSite]) > 0 {
		do = append(do, "move its child sites under another site or delete them (osvcctl site update CODE --parent OTHER)")
	}
	if len(n.byKind[image]) > 0 {
		do = append(do, "an image stays in the site it was imported into, so a site with images stays")
	}
	return strings.Join(do, "; ")
}
