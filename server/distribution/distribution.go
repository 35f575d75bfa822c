// Package distribution keeps the images on the distribution points: agents
// that hold the role for their site (the site's distribution_points setting
// names them, or the agent asked for it) keep the version of every image of
// their site and of the sites above it that the image's
// distribution_version names, and serve it to deployment clients.
//
// Each distribution point has one record per image,
// distributions/{agent}/{image}, with the version it is to hold and where it
// stands (PENDING, TRANSFERRING, DISTRIBUTED, FAILED). An elected replica
// reconciles: whenever images, sites or roles change (and every minute), it
// points every record at the image's distribution_version once that version
// is inspected, creating the records of new distribution points. The replica
// holding a distribution point's stream sends it a Distribute for each record
// it has not finished; the agent's reports move the record on, only while
// the record still targets the file the report names.
package distribution

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/types/known/timestamppb"

	storev1 "github.com/osvc/osvc/gen/osvc/store/v1"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/agents"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/store"
)

const (
	// defaultInterval is how often the reconciler passes without an event.
	defaultInterval = time.Minute
	// electionTTL bounds how long a dead reconciler blocks the others.
	electionTTL = 10 * time.Second
	// maxErrorLen bounds the error text of a report as stored.
	maxErrorLen = 1024
	// settle gathers the events of one change (a swap writes the image and
	// the run) into one pass.
	settle = 100 * time.Millisecond
)

// Role sources, as DistributionPoint.role_from names them.
const (
	FromSite  = "site"
	FromAgent = "agent"
)

// Trees reads package tree manifests from the content library
// (content.Library is one).
type Trees interface {
	ReadTree(ctx context.Context, sha256 string) (*osvcv1.PackageTree, error)
}

// Config configures a Service.
type Config struct {
	Store *store.Store
	// Trees reads the manifests of the package trees a point may read the
	// files of; without it a point reads only a version's own file.
	Trees  Trees
	Logger hclog.Logger
	// ServerID names this replica in the reconciler's election.
	ServerID string
	// Interval is how often the reconciler passes when nothing changed;
	// default one minute.
	Interval time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Service reads and writes the distributions.
type Service struct {
	trees    Trees
	manifest manifests
	store    *store.Store
	client   *clientv3.Client
	logger   hclog.Logger
	serverID string
	interval time.Duration
	now      func() time.Time
}

// New validates cfg and returns a Service.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil {
		return nil, errors.New("distribution: Config.Store is required")
	}
	if cfg.Interval < 0 {
		return nil, fmt.Errorf("distribution: Config.Interval is %s; use a positive duration", cfg.Interval)
	}
	s := &Service{
		trees:    cfg.Trees,
		store:    cfg.Store,
		client:   cfg.Store.Client(),
		logger:   cfg.Logger,
		serverID: cmp.Or(cfg.ServerID, "server"),
		interval: cmp.Or(cfg.Interval, defaultInterval),
		now:      cfg.Now,
	}
	if s.logger == nil {
		s.logger = hclog.NewNullLogger()
	}
	s.logger = s.logger.Named("distribution")
	if s.now == nil {
		s.now = time.Now
	}
	return s, nil
}

// point is a distribution point as the reconciler sees it.
type point struct {
	id       string // agent id
	site     string
	roleFrom []string
}

// world is what one reconciler pass reads, in one revision.
type world struct {
	images []*osvcv1.Image
	sites  map[string]*osvcv1.Site
	points map[string]*point
	// records by agent id, then image id, with their revisions.
	records map[string]map[string]*record
}

type record struct {
	d   *osvcv1.Distribution
	rev int64
}

// read reads images, sites, roles and records in one revision.
func (s *Service) read(ctx context.Context) (*world, error) { return s.readWorld(ctx, true) }

// topology reads only the sites and roles: where the points are.
func (s *Service) topology(ctx context.Context) (*world, error) { return s.readWorld(ctx, false) }

func (s *Service) readWorld(ctx context.Context, all bool) (*world, error) {
	ops := []clientv3.Op{
		clientv3.OpGet(s.store.SitesPrefix(), clientv3.WithPrefix()),
		clientv3.OpGet(s.store.DistributionPointsPrefix(), clientv3.WithPrefix()),
	}
	if all {
		ops = append(ops,
			clientv3.OpGet(s.store.ImagesPrefix(), clientv3.WithPrefix()),
			clientv3.OpGet(s.store.DistributionsPrefix(""), clientv3.WithPrefix()))
	}
	resp, err := s.client.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return nil, fmt.Errorf("read sites and distribution points: %w", err)
	}
	w := &world{sites: map[string]*osvcv1.Site{}, points: map[string]*point{}, records: map[string]map[string]*record{}}
	if all {
		if err := w.readImagesAndRecords(resp.Responses[2].GetResponseRange().GetKvs(), resp.Responses[3].GetResponseRange().GetKvs()); err != nil {
			return nil, err
		}
	}
	return w, w.readPoints(resp.Responses[0].GetResponseRange().GetKvs(), resp.Responses[1].GetResponseRange().GetKvs())
}

// readImagesAndRecords fills w's images and records from their keys.
func (w *world) readImagesAndRecords(images, records []*mvccpb.KeyValue) error {
	for _, kv := range images {
		img, err := store.Unmarshal[*osvcv1.Image](kv.Value)
		if err != nil {
			return fmt.Errorf("image %s: %w", kv.Key, err)
		}
		w.images = append(w.images, img)
	}
	for _, kv := range records {
		d, err := store.Unmarshal[*osvcv1.Distribution](kv.Value)
		if err != nil {
			return fmt.Errorf("distribution %s: %w", kv.Key, err)
		}
		agent, image := agents.ID(d.GetDistributionPoint()), store.IDFromKey(string(kv.Key))
		if w.records[agent] == nil {
			w.records[agent] = map[string]*record{}
		}
		w.records[agent][image] = &record{d: d, rev: kv.ModRevision}
	}
	return nil
}

// readPoints fills w's sites and points: the agents a site's setting
// names, placed at that site, and those that asked for the role.
func (w *world) readPoints(sites, roles []*mvccpb.KeyValue) error {
	for _, kv := range sites {
		site, err := store.Unmarshal[*osvcv1.Site](kv.Value)
		if err != nil {
			return fmt.Errorf("site %s: %w", kv.Key, err)
		}
		w.sites[site.GetCode()] = site
	}
	add := func(id, site, from string) {
		p := w.points[id]
		if p == nil {
			p = &point{id: id, site: site}
			w.points[id] = p
		}
		if !slices.Contains(p.roleFrom, from) {
			p.roleFrom = append(p.roleFrom, from)
		}
	}
	for _, code := range slices.Sorted(maps.Keys(w.sites)) {
		for _, dp := range w.sites[code].GetDistributionPoints() {
			add(agents.ID(dp), code, FromSite)
		}
	}
	for _, kv := range roles {
		role, err := store.Unmarshal[*storev1.DistributionPointRole](kv.Value)
		if err != nil {
			return fmt.Errorf("distribution point role %s: %w", kv.Key, err)
		}
		add(store.IDFromKey(string(kv.Key)), role.GetSite(), FromAgent)
	}
	return nil
}

// recordsOf reads the records of img on the points that are to hold it
// (those of its site and the sites below): what one image's view needs,
// without reading every point's records.
func (s *Service) recordsOf(ctx context.Context, img *osvcv1.Image) ([]*mvccpb.KeyValue, error) {
	w, err := s.topology(ctx)
	if err != nil {
		return nil, err
	}
	imageID := store.IDFromKey(img.GetName())
	var keys []string
	for _, p := range w.pointsOf(img) {
		keys = append(keys, s.store.DistributionKey(p.id, imageID))
	}
	kvs, err := store.GetManyRaw(ctx, s.store, keys)
	if err != nil {
		return nil, fmt.Errorf("read the distributions of %s: %w", img.GetName(), err)
	}
	return slices.DeleteFunc(kvs, func(kv *mvccpb.KeyValue) bool { return kv == nil }), nil
}

// below tells whether site is ancestor or ancestor's descendant (or itself).
func (w *world) below(site, ancestor string) bool {
	for range 64 {
		if site == ancestor {
			return true
		}
		s := w.sites[site]
		if s == nil || s.GetParentSite() == "" {
			return false
		}
		site = s.GetParentSite()
	}
	return false
}

// pointsOf returns the distribution points of image's site and the sites
// below it, in id order.
func (w *world) pointsOf(img *osvcv1.Image) []*point {
	var out []*point
	for _, id := range slices.Sorted(maps.Keys(w.points)) {
		if p := w.points[id]; w.below(p.site, img.GetSite()) {
			out = append(out, p)
		}
	}
	return out
}

// Target returns the version of img its distribution points are to hold:
// its distribution_version once inspected; nil when there is none.
func Target(img *osvcv1.Image) *osvcv1.ImageVersion {
	if img.GetDistributionVersion() == 0 {
		return nil
	}
	for _, v := range img.GetVersions() {
		if v.GetVersion() != img.GetDistributionVersion() {
			continue
		}
		switch v.GetInspection() {
		case osvcv1.InspectionState_INSPECTION_STATE_INSPECTED, osvcv1.InspectionState_INSPECTION_STATE_UNSPECIFIED:
			return v
		}
		return nil
	}
	return nil
}

// Reconcile makes one pass: every distribution point of every distributed
// image gets a record targeting the image's version, PENDING when it is
// new to it, and the records of points that are no longer to hold their
// image (the point lost the role, the image is gone or no longer in the
// point's sites) are deleted, which withdraws the image from the point. It
// returns how many records it wrote or deleted.
func (s *Service) Reconcile(ctx context.Context) (int, error) {
	w, err := s.read(ctx)
	if err != nil {
		return 0, err
	}
	written, err := s.prune(ctx, w)
	if err != nil {
		return written, err
	}
	for _, img := range w.images {
		v := Target(img)
		if v == nil {
			continue
		}
		imageID := store.IDFromKey(img.GetName())
		for _, p := range w.pointsOf(img) {
			old := w.records[p.id][imageID]
			if old != nil && old.d.GetSha256() == v.GetSha256() && old.d.GetTree().GetSha256() == v.GetTree().GetSha256() {
				continue
			}
			ok, err := s.target(ctx, p, img, v, old)
			if err != nil {
				return written, err
			}
			if ok {
				written++
			}
		}
	}
	return written, nil
}

// prune deletes the records no distribution point is to hold any more.
func (s *Service) prune(ctx context.Context, w *world) (int, error) {
	images := map[string]*osvcv1.Image{}
	for _, img := range w.images {
		images[store.IDFromKey(img.GetName())] = img
	}
	deleted := 0
	for _, agent := range slices.Sorted(maps.Keys(w.records)) {
		p := w.points[agent]
		for _, imageID := range slices.Sorted(maps.Keys(w.records[agent])) {
			img := images[imageID]
			if p != nil && img != nil && img.GetDistributionVersion() != 0 && w.below(p.site, img.GetSite()) {
				continue
			}
			key := s.store.DistributionKey(agent, imageID)
			resp, err := s.client.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", w.records[agent][imageID].rev)).
				Then(clientv3.OpDelete(key)).Commit()
			if err != nil {
				return deleted, fmt.Errorf("withdraw %s from %s: %w", imageID, agent, err)
			}
			if resp.Succeeded {
				deleted++
				s.logger.Info("distribution withdrawn", "image", catalog.ImageName(imageID), "distribution_point", agent)
			}
		}
	}
	return deleted, nil
}

// target points p's record of img at v, PENDING, unless the record changed
// since the pass read it (the next pass sees it again).
func (s *Service) target(ctx context.Context, p *point, img *osvcv1.Image, v *osvcv1.ImageVersion, old *record) (bool, error) {
	d := &osvcv1.Distribution{
		Image:             img.GetName(),
		DistributionPoint: agents.Name(p.id),
		Site:              p.site,
		State:             osvcv1.DistributionState_DISTRIBUTION_STATE_PENDING,
		Version:           v.GetVersion(),
		Sha256:            v.GetSha256(),
		SizeBytes:         v.GetSizeBytes(),
		Tree:              v.GetTree(),
		UpdateTime:        timestamppb.New(s.now()),
	}
	rev := int64(0)
	if old != nil {
		d.DistributedVersion = old.d.GetDistributedVersion()
		rev = old.rev
	}
	data, err := s.store.Marshal(d)
	if err != nil {
		return false, err
	}
	key := s.store.DistributionKey(p.id, store.IDFromKey(img.GetName()))
	resp, err := s.client.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
		Then(clientv3.OpPut(key, string(data))).Commit()
	if err != nil {
		return false, fmt.Errorf("distribute %s to %s: %w", img.GetName(), p.id, err)
	}
	if resp.Succeeded {
		s.logger.Info("distribution pending", "image", img.GetName(), "version", v.GetVersion(), "distribution_point", p.id, "site", p.site)
	}
	return resp.Succeeded, nil
}

// Run reconciles while this replica is elected, until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	return s.store.RunElected(ctx, store.Election{
		Prefix: s.store.DistributionElectionPrefix(), ID: s.serverID, TTL: electionTTL, Logger: s.logger,
	}, s.lead)
}

// lead reconciles at once, then after every change of images, sites or
// roles, and every interval.
func (s *Service) lead(ctx context.Context) error {
	poke := make(chan struct{}, 1)
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for _, prefix := range []string{s.store.ImagesPrefix(), s.store.SitesPrefix(), s.store.DistributionPointsPrefix()} {
		wch := s.client.Watch(wctx, prefix, clientv3.WithPrefix())
		go func() {
			for wresp := range wch {
				if wresp.Err() != nil {
					cancel()
				}
				select {
				case poke <- struct{}{}:
				default:
				}
			}
			cancel()
		}()
	}
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		if _, err := s.Reconcile(ctx); err != nil {
			s.logger.Warn("cannot reconcile the distribution points; trying again", "error", err)
		}
		select {
		case <-wctx.Done():
			return fmt.Errorf("watch ended: %w", context.Cause(wctx))
		case <-t.C:
		case <-poke:
			settleFor(wctx, settle)
		}
	}
}

func settleFor(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// Distribute makes image's current version the one its distribution points
// are to hold; the reconciler starts the transfers.
func (s *Service) Distribute(ctx context.Context, name string) (*osvcv1.Image, error) {
	id, err := catalog.ImageID(name)
	if err != nil {
		return nil, err
	}
	var out *osvcv1.Image
	_, err = s.store.Txn(ctx, "distribute "+name, func(tx *store.Tx) error {
		img, err := store.Load[*osvcv1.Image](tx, s.store.ImageKey(id))
		if errors.Is(err, errdefs.ErrNotFound) {
			return fmt.Errorf("image %s: %w", name, errdefs.ErrNotFound)
		}
		if err != nil {
			return err
		}
		cur := currentVersion(img)
		if cur == nil {
			return fmt.Errorf("image %s has no current version to distribute: %w", name, errdefs.ErrFailedPrecondition)
		}
		if cur.GetInspection() == osvcv1.InspectionState_INSPECTION_STATE_FAILED {
			return fmt.Errorf("version %d of %s failed its inspection (%s) and is not distributed: %w",
				cur.GetVersion(), name, cur.GetInspectionError(), errdefs.ErrFailedPrecondition)
		}
		img.DistributionVersion = cur.GetVersion()
		img.UpdateTime = timestamppb.New(s.now())
		out = img
		return tx.Put(s.store.ImageKey(id), img)
	})
	if err != nil {
		return nil, err
	}
	// Those that gave up on this version start again.
	if err := s.retryFailed(ctx, out, Target(out)); err != nil {
		return nil, err
	}
	return out, nil
}

// retryFailed moves the FAILED records of img's version v back to PENDING.
func (s *Service) retryFailed(ctx context.Context, img *osvcv1.Image, v *osvcv1.ImageVersion) error {
	if v == nil {
		return nil
	}
	kvs, err := s.recordsOf(ctx, img)
	if err != nil {
		return err
	}
	for _, kv := range kvs {
		d, err := store.Unmarshal[*osvcv1.Distribution](kv.Value)
		if err != nil || d.GetSha256() != v.GetSha256() || d.GetState() != osvcv1.DistributionState_DISTRIBUTION_STATE_FAILED {
			continue
		}
		d.State, d.Retries, d.Error = osvcv1.DistributionState_DISTRIBUTION_STATE_PENDING, 0, ""
		d.UpdateTime = timestamppb.New(s.now())
		data, err := s.store.Marshal(d)
		if err != nil {
			return err
		}
		key := string(kv.Key)
		if _, err := s.client.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
			Then(clientv3.OpPut(key, string(data))).Commit(); err != nil {
			return fmt.Errorf("retry %s on %s: %w", img.GetName(), d.GetDistributionPoint(), err)
		}
	}
	return nil
}

func currentVersion(img *osvcv1.Image) *osvcv1.ImageVersion {
	for _, v := range img.GetVersions() {
		if v.GetVersion() == img.GetCurrentVersion() {
			return v
		}
	}
	return nil
}
