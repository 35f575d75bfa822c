package distribution

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/agents"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/store"
)

// ErrStale refuses a report about a file the distribution no longer
// targets: the agent drops that transfer.
var ErrStale = fmt.Errorf("the distribution no longer targets this file: %w", errdefs.ErrStaleLease)

// Report records what agent (its id) says of a Distribute: only while its
// record of the image still targets the reported file, and never back from
// DISTRIBUTED for that file.
func (s *Service) Report(ctx context.Context, agent string, m *osvcv1.DistributionReport) error {
	imageID, err := catalog.ImageID(m.GetImage())
	if err != nil {
		return err
	}
	switch m.GetState() {
	case osvcv1.DistributionState_DISTRIBUTION_STATE_TRANSFERRING, osvcv1.DistributionState_DISTRIBUTION_STATE_DISTRIBUTED,
		osvcv1.DistributionState_DISTRIBUTION_STATE_FAILED:
	default:
		return errdefs.InvalidArgument("distribution_report.state", "report TRANSFERRING, DISTRIBUTED or FAILED")
	}
	if m.GetBytesTransferred() < 0 || m.GetBytesReceived() < 0 || m.GetRetries() < 0 {
		return errdefs.InvalidArgument("distribution_report", "byte counts and retries are never negative")
	}
	if err := agents.ValidateDistributionURL(m.GetUrl()); err != nil {
		return errdefs.InvalidArgument("distribution_report.url", err.Error())
	}
	key := s.store.DistributionKey(agent, imageID)
	_, err = s.store.Txn(ctx, "distribution report", func(tx *store.Tx) error {
		d, err := store.Load[*osvcv1.Distribution](tx, key)
		if errors.Is(err, errdefs.ErrNotFound) {
			return fmt.Errorf("no distribution of %s to %s: %w", m.GetImage(), agent, errdefs.ErrNotFound)
		}
		if err != nil {
			return err
		}
		if d.GetSha256() != m.GetSha256() || d.GetVersion() != m.GetVersion() {
			return fmt.Errorf("report of version %d (%s), the distribution targets version %d (%s): %w",
				m.GetVersion(), m.GetSha256(), d.GetVersion(), d.GetSha256(), ErrStale)
		}
		if d.GetState() == osvcv1.DistributionState_DISTRIBUTION_STATE_DISTRIBUTED {
			return nil // a late progress report of a finished transfer
		}
		d.State = m.GetState()
		d.BytesTransferred = min(m.GetBytesTransferred(), d.GetSizeBytes())
		d.BytesReceived = min(m.GetBytesReceived(), d.GetSizeBytes())
		d.Retries = m.GetRetries()
		d.Error = clip(m.GetError())
		if m.GetUrl() != "" {
			d.Url = m.GetUrl()
		}
		if d.State == osvcv1.DistributionState_DISTRIBUTION_STATE_DISTRIBUTED {
			d.DistributedVersion, d.BytesTransferred, d.Error = d.GetVersion(), d.GetSizeBytes(), ""
		}
		d.UpdateTime = timestamppb.New(s.now())
		return tx.Put(key, d)
	})
	if err == nil && m.GetState() != osvcv1.DistributionState_DISTRIBUTION_STATE_TRANSFERRING {
		s.logger.Info("distribution "+strings.ToLower(strings.TrimPrefix(m.GetState().String(), "DISTRIBUTION_STATE_")),
			"image", m.GetImage(), "version", m.GetVersion(), "distribution_point", agent, "error", m.GetError())
	}
	return err
}

func clip(s string) string {
	if len(s) <= maxErrorLen {
		return s
	}
	return strings.ToValidUTF8(s[:maxErrorLen], "") + "…"
}

// Unfinished returns the Distributes agent (its id) has not finished:
// PENDING and TRANSFERRING records, for its stream to send.
func (s *Service) Unfinished(ctx context.Context, agent string) ([]*osvcv1.Distribute, error) {
	list, err := s.ofAgent(ctx, agent)
	if err != nil {
		return nil, err
	}
	var out []*osvcv1.Distribute
	for _, d := range list {
		if m := Message(d); m != nil {
			out = append(out, m)
		}
	}
	return out, nil
}

// Message is the Distribute of an unfinished record; nil for a finished one.
func Message(d *osvcv1.Distribution) *osvcv1.Distribute {
	switch d.GetState() {
	case osvcv1.DistributionState_DISTRIBUTION_STATE_PENDING, osvcv1.DistributionState_DISTRIBUTION_STATE_TRANSFERRING:
		return &osvcv1.Distribute{Image: d.GetImage(), Version: d.GetVersion(), Sha256: d.GetSha256(), SizeBytes: d.GetSizeBytes(), Tree: d.GetTree()}
	}
	return nil
}

func (s *Service) ofAgent(ctx context.Context, agent string) ([]*osvcv1.Distribution, error) {
	resp, err := s.client.Get(ctx, s.store.DistributionsPrefix(agent), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read the distributions of %s: %w", agent, err)
	}
	out := make([]*osvcv1.Distribution, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		d, err := store.Unmarshal[*osvcv1.Distribution](kv.Value)
		if err != nil {
			return nil, fmt.Errorf("distribution %s: %w", kv.Key, err)
		}
		out = append(out, d)
	}
	return out, nil
}

// Stale returns those of images (images/{id}) agent (its id) has no record
// of: what it serves and is no longer to hold.
func (s *Service) Stale(ctx context.Context, agent string, images []string) ([]string, error) {
	if len(images) == 0 {
		return nil, nil
	}
	list, err := s.ofAgent(ctx, agent)
	if err != nil {
		return nil, err
	}
	held := map[string]bool{}
	for _, d := range list {
		held[d.GetImage()] = true
	}
	var out []string
	for _, image := range images {
		if !held[image] {
			out = append(out, image)
		}
	}
	return out, nil
}

// MayRead tells whether agent (its id) is to hold blob sha256 as a
// distribution point: the file a record of it targets, or the manifest of
// its package tree or one of the tree's files.
func (s *Service) MayRead(ctx context.Context, agent, sha256 string) (bool, error) {
	list, err := s.ofAgent(ctx, agent)
	if err != nil {
		return false, err
	}
	for _, d := range list {
		if d.GetSha256() == sha256 || d.GetTree().GetSha256() == sha256 {
			return true, nil
		}
	}
	for _, d := range list {
		if tree := d.GetTree().GetSha256(); tree != "" && s.trees != nil {
			files, err := s.manifest.files(ctx, s.trees, tree)
			if err != nil {
				return false, err
			}
			if files[sha256] {
				return true, nil
			}
		}
	}
	return false, nil
}

// OfImage returns where the distribution points of img's site and the
// sites below it stand with img, in agent order.
func (s *Service) OfImage(ctx context.Context, img *osvcv1.Image) ([]*osvcv1.Distribution, error) {
	kvs, err := s.recordsOf(ctx, img)
	if err != nil {
		return nil, err
	}
	out := make([]*osvcv1.Distribution, 0, len(kvs))
	for _, kv := range kvs {
		d, err := store.Unmarshal[*osvcv1.Distribution](kv.Value)
		if err != nil {
			return nil, fmt.Errorf("distribution %s: %w", kv.Key, err)
		}
		out = append(out, d)
	}
	return out, nil
}

// Points lists the distribution points (of site, when set), each with its
// records, its announced URL and its link state.
func (s *Service) Points(ctx context.Context, site string) ([]*osvcv1.DistributionPoint, error) {
	w, err := s.topology(ctx)
	if err != nil {
		return nil, err
	}
	var ids, keys []string
	for _, id := range slices.Sorted(maps.Keys(w.points)) {
		if site == "" || w.points[id].site == site {
			ids, keys = append(ids, id), append(keys, s.store.AgentKey(id))
		}
	}
	records, _, err := store.GetMany[*osvcv1.Agent](ctx, s.store, keys)
	if err != nil {
		return nil, fmt.Errorf("read the distribution points' agents: %w", err)
	}
	out := make([]*osvcv1.DistributionPoint, 0, len(ids))
	for i, id := range ids {
		p := w.points[id]
		// An agent never connected has no record: its link state stays unspecified.
		dp := &osvcv1.DistributionPoint{Name: agents.Name(id), Site: p.site, RoleFrom: p.roleFrom,
			Url: records[i].GetDistributionUrl(), State: records[i].GetState()}
		if dp.Distributions, err = s.ofAgent(ctx, id); err != nil {
			return nil, err
		}
		for _, d := range dp.Distributions {
			if base, ok := strings.CutSuffix(d.GetUrl(), d.GetImage()); ok && dp.Url == "" {
				dp.Url = base
			}
		}
		out = append(out, dp)
	}
	return out, nil
}
