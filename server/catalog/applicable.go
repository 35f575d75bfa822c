package catalog

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/applicability"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/store"
)

// ApplicableUpdates returns, in name order and unpaged, the updates matching f
// that apply to at least one index of the image, by the applicability rule
// the engines use too (package applicability): architecture, OS builds, not
// installed, not superseded by an installed package. What an installed
// package supersedes comes from the supersedes list of its catalog update.
//
// It reads only the updates the target index lists for the image's
// architectures and builds (store.UpdateTargetKey), not the whole catalog.
// An update that is not a package (e.g. an .exe) has no identity and is
// listed when its architecture matches: the engine decides and reports it
// UNSUPPORTED. Updates superseded by other applicable updates are still
// listed; which of them to apply is the administrator's choice.
//
// An update an agent's engine reported UNSUPPORTED for the image
// (Image.unsupported_updates) is left out: it would never apply.
func (c *Catalog) ApplicableUpdates(ctx context.Context, image *osvcv1.Image, f *osvcv1.UpdateFilter) ([]*osvcv1.Update, error) {
	out, _, err := c.applicable(ctx, image, f, false, "", 0)
	return out, err
}

// ListApplicableUpdates pages through ApplicableUpdates of the image named
// imageName. The page token names the last update returned and the image, so
// a token from another image's list is refused.
// With includeUnsupported, the updates an engine reported UNSUPPORTED for
// the image are listed too.
func (c *Catalog) ListApplicableUpdates(ctx context.Context, imageName string, f *osvcv1.UpdateFilter, includeUnsupported bool, pageSize int, token string) ([]*osvcv1.Update, string, error) {
	img, err := c.GetImage(ctx, imageName)
	if err != nil {
		return nil, "", err
	}
	after := ""
	if token != "" {
		if after, err = decodeApplicableToken(imageName, token); err != nil {
			return nil, "", err
		}
	}
	page, more, err := c.applicable(ctx, img, f, includeUnsupported, after, clampPageSize(pageSize))
	if err != nil || !more || len(page) == 0 {
		return page, "", err
	}
	return page, encodeApplicableToken(imageName, page[len(page)-1].GetName()), nil
}

// applicable walks the candidates of the image's targets in name order after
// the update named after, and returns up to limit (0: all) applicable
// updates matching f, and whether candidates remain unchecked.
func (c *Catalog) applicable(ctx context.Context, image *osvcv1.Image, f *osvcv1.UpdateFilter, includeUnsupported bool, after string, limit int) ([]*osvcv1.Update, bool, error) {
	match, err := newFilter(f)
	if err != nil {
		return nil, false, err
	}
	indexes, err := c.applicabilityIndexes(ctx, image)
	if err != nil {
		return nil, false, err
	}
	cur := &candidateCursor{c: c, prefixes: c.targetPrefixes(image), after: strings.TrimPrefix(after, updatesCollection)}
	batch := opsPerTxn
	if limit > 0 {
		batch = min(limit, opsPerTxn)
	}
	var out []*osvcv1.Update
	for {
		ids, err := cur.next(ctx, batch)
		if err != nil {
			return nil, false, fmt.Errorf("applicable updates of %s: %w", image.GetName(), err)
		}
		if len(ids) == 0 {
			return out, false, nil
		}
		updates, err := c.getUpdates(ctx, ids)
		if err != nil {
			return nil, false, err
		}
		for i, u := range updates {
			if u == nil || !match(u) || (!includeUnsupported && slices.Contains(image.GetUnsupportedUpdates(), u.GetName())) {
				continue
			}
			p := applicabilityPackage(u)
			if !slices.ContainsFunc(indexes, func(ix *applicability.Index) bool {
				v, _ := applicability.Check(p, ix)
				return v == applicability.Applies
			}) {
				continue
			}
			out = append(out, u)
			if limit > 0 && len(out) == limit {
				// Candidates remain unless this was the last of the last batch.
				return out, i < len(updates)-1 || len(ids) == batch, nil
			}
		}
	}
}

// candidateCursor walks the update ids under several target prefixes as one
// sorted list without duplicates: the next n ids overall are among the next
// n of each prefix, so a step reads at most n keys per prefix, keys only.
type candidateCursor struct {
	c        *Catalog
	prefixes []string
	after    string // the last id returned
}

func (cur *candidateCursor) next(ctx context.Context, n int) ([]string, error) {
	var ids []string
	for _, prefix := range cur.prefixes {
		start := prefix
		if cur.after != "" {
			start = prefix + cur.after + "\x00"
		}
		resp, err := cur.c.store.Client().Get(ctx, start, clientv3.WithRange(clientv3.GetPrefixRangeEnd(prefix)),
			clientv3.WithKeysOnly(), clientv3.WithLimit(int64(n)), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
		if err != nil {
			return nil, err
		}
		for _, kv := range resp.Kvs {
			ids = append(ids, store.IDFromKey(string(kv.Key)))
		}
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	if len(ids) > n {
		ids = ids[:n]
	}
	if len(ids) > 0 {
		cur.after = ids[len(ids)-1]
	}
	return ids, nil
}

// targetPrefixes are the update-target index prefixes of an image: for each
// index its architecture and neutral, each with its build and any build.
func (c *Catalog) targetPrefixes(image *osvcv1.Image) []string {
	var out []string
	for _, idx := range image.GetIndexes() {
		archs := []string{targetArch(osvcv1.Architecture_ARCHITECTURE_NEUTRAL)}
		if a := idx.GetArchitecture(); a != osvcv1.Architecture_ARCHITECTURE_UNSPECIFIED && a != osvcv1.Architecture_ARCHITECTURE_NEUTRAL {
			archs = append(archs, targetArch(a))
		}
		for _, a := range archs {
			out = append(out, c.store.UpdateTargetsPrefix(a, idx.GetBuild(), false), c.store.UpdateTargetsPrefix(a, 0, true))
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// targetArch names an architecture in the target index; an update of no
// known architecture applies to all, as a neutral one does.
func targetArch(a osvcv1.Architecture) string {
	switch a {
	case osvcv1.Architecture_ARCHITECTURE_X86, osvcv1.Architecture_ARCHITECTURE_X64, osvcv1.Architecture_ARCHITECTURE_ARM64:
		return applicability.ArchName(a)
	}
	return "neutral"
}

// targetKeys are the update-target index keys of the update u stored as id.
// An update for every build from a minimum on is indexed under any build,
// as one for every build is: the applicability rule then drops the
// earlier builds.
func (c *Catalog) targetKeys(u *osvcv1.Update, id string) []string {
	arch := targetArch(u.GetArchitecture())
	keys := make([]string, 0, len(u.GetApplicableBuilds())+1)
	if len(u.GetApplicableBuilds()) == 0 || u.GetMinBuild() != 0 {
		keys = append(keys, c.store.UpdateTargetKey(arch, 0, true, id))
	}
	for _, b := range u.GetApplicableBuilds() {
		keys = append(keys, c.store.UpdateTargetKey(arch, b, false, id))
	}
	return keys
}

// opsPerTxn stays under etcd's default limit of 128 operations per transaction.
const opsPerTxn = 100

// getUpdates reads updates by id, a hundred per round trip; an update
// deleted since its index was read is nil.
func (c *Catalog) getUpdates(ctx context.Context, ids []string) ([]*osvcv1.Update, error) {
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = c.store.UpdateKey(id)
	}
	updates, _, err := store.GetMany[*osvcv1.Update](ctx, c.store, keys)
	return updates, err
}

// applicabilityIndexes describes the image's indexes for the rule; the
// supersedes list of each installed package is its catalog update's, found
// through the identity index.
func (c *Catalog) applicabilityIndexes(ctx context.Context, image *osvcv1.Image) ([]*applicability.Index, error) {
	var keys []string
	for _, idx := range image.GetIndexes() {
		for _, inst := range idx.GetInstalledUpdates() {
			if id := inst.GetPackageIdentity(); id != "" {
				keys = append(keys, c.store.UpdateIdentityKey(id))
			}
		}
	}
	slices.Sort(keys)
	ids, err := store.GetManyRaw(ctx, c.store, slices.Compact(keys))
	if err != nil {
		return nil, fmt.Errorf("installed updates of %s: %w", image.GetName(), err)
	}
	var found []string
	for _, kv := range ids {
		if kv != nil {
			found = append(found, string(kv.Value))
		}
	}
	installed, err := c.getUpdates(ctx, found)
	if err != nil {
		return nil, err
	}
	byIdentity := map[string]*osvcv1.Update{}
	for _, u := range installed {
		if u != nil && u.GetPackageIdentity() != "" {
			byIdentity[strings.ToLower(u.GetPackageIdentity())] = u
		}
	}
	out := make([]*applicability.Index, 0, len(image.GetIndexes()))
	for _, idx := range image.GetIndexes() {
		out = append(out, applicabilityIndex(idx, byIdentity))
	}
	return out, nil
}

// applicabilityPackage is a catalog update as the applicability rule sees it.
func applicabilityPackage(u *osvcv1.Update) applicability.Package {
	return applicability.Package{
		Identity: u.GetPackageIdentity(),
		KB:       u.GetKb(),
		Name:     u.GetName(),
		Update:   u.GetName(),
		Arch:     u.GetArchitecture(),
		Builds:   u.GetApplicableBuilds(),
		MinBuild: u.GetMinBuild(),
	}
}

// applicabilityIndex is an image index with what it has installed; the
// supersedes list of each installed package is its catalog update's.
func applicabilityIndex(idx *osvcv1.ImageIndex, byIdentity map[string]*osvcv1.Update) *applicability.Index {
	var installed []applicability.Installed
	for _, inst := range idx.GetInstalledUpdates() {
		in := applicability.Installed{Identity: inst.GetPackageIdentity(), KB: inst.GetKb(), Update: inst.GetUpdate()}
		if u := byIdentity[strings.ToLower(inst.GetPackageIdentity())]; u != nil {
			in.Supersedes = u.GetSupersedes()
		}
		installed = append(installed, in)
	}
	return applicability.NewIndex(int(idx.GetIndex()), idx.GetArchitecture(), idx.GetBuild(), installed)
}

func encodeApplicableToken(imageName, lastUpdate string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(imageName + "\x00" + lastUpdate))
}

func decodeApplicableToken(imageName, token string) (string, error) {
	raw, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return "", errdefs.InvalidArgument("page_token", "not a token returned by this list; start again without one")
	}
	img, last, ok := strings.Cut(string(raw), "\x00")
	if !ok || img != imageName || !strings.HasPrefix(last, updatesCollection) {
		return "", errdefs.InvalidArgument("page_token", "the token belongs to another list; start again without one")
	}
	return last, nil
}

// Expectation is what applying an update to an image is expected to give,
// from what the image's indexes have installed.
type Expectation struct {
	// State is APPLIED when the update applies to an index, else
	// ALREADY_INSTALLED or NOT_APPLICABLE.
	State osvcv1.UpdateState
	// Reason says why it is not APPLIED.
	Reason string
}

// Expect says, for each of updates, what applying it to image is expected
// to give: APPLIED when it applies to at least one index; ALREADY_INSTALLED
// when every index has it; else NOT_APPLICABLE, with the reason of the
// first index it does not apply to.
func (c *Catalog) Expect(ctx context.Context, image *osvcv1.Image, updates []*osvcv1.Update) ([]Expectation, error) {
	indexes, err := c.applicabilityIndexes(ctx, image)
	if err != nil {
		return nil, err
	}
	out := make([]Expectation, len(updates))
	for i, u := range updates {
		p := applicabilityPackage(u)
		installed := 0
		e := Expectation{State: osvcv1.UpdateState_UPDATE_STATE_NOT_APPLICABLE}
		for _, ix := range indexes {
			v, why := applicability.Check(p, ix)
			if v == applicability.Applies {
				e = Expectation{State: osvcv1.UpdateState_UPDATE_STATE_APPLIED}
				break
			}
			if v == applicability.AlreadyInstalled {
				installed++
			}
			if e.Reason == "" {
				e.Reason = why
			}
		}
		if e.State != osvcv1.UpdateState_UPDATE_STATE_APPLIED && installed == len(indexes) && installed > 0 {
			e.State = osvcv1.UpdateState_UPDATE_STATE_ALREADY_INSTALLED
		}
		out[i] = e
	}
	return out, nil
}
