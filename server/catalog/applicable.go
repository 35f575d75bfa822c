package catalog

import (
	"context"
	"encoding/base64"
	"slices"
	"strings"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/store"
)

// ApplicableUpdates returns, in name order and unpaged, the updates matching f
// that apply to at least one index of the image. An update applies to an index
// when
//   - its architecture is NEUTRAL (or unknown) or the index's,
//   - its applicable_builds are empty or hold the index's build,
//   - its package identity is not installed in the index (nor, by catalog
//     name, the update itself), and
//   - no package installed in the index supersedes it, as told by the
//     supersedes list of that package's catalog update.
//
// An update that is not a package (e.g. an .exe) has no identity and is listed
// when its architecture matches: the engine decides and reports it UNSUPPORTED.
// Updates superseded by other applicable updates are still listed; which of
// them to apply is the administrator's choice.
func (c *Catalog) ApplicableUpdates(ctx context.Context, image *osvcv1.Image, f *osvcv1.UpdateFilter) ([]*osvcv1.Update, error) {
	match, err := newFilter(f)
	if err != nil {
		return nil, err
	}
	all, err := c.allUpdates(ctx)
	if err != nil {
		return nil, err
	}
	byIdentity := make(map[string]*osvcv1.Update, len(all))
	for _, u := range all {
		if u.GetPackageIdentity() != "" {
			byIdentity[u.GetPackageIdentity()] = u
		}
	}
	indexes := make([]indexView, 0, len(image.GetIndexes()))
	for _, idx := range image.GetIndexes() {
		indexes = append(indexes, newIndexView(idx, byIdentity))
	}
	var out []*osvcv1.Update
	for _, u := range all {
		if !match(u) {
			continue
		}
		if slices.ContainsFunc(indexes, func(v indexView) bool { return v.applies(u) }) {
			out = append(out, u)
		}
	}
	return out, nil
}

// allUpdates reads the whole update catalog, page by page.
func (c *Catalog) allUpdates(ctx context.Context) ([]*osvcv1.Update, error) {
	var all []*osvcv1.Update
	token := ""
	for {
		page, next, err := store.List[*osvcv1.Update](ctx, c.store, c.store.UpdatesPrefix(), maxPageSize, token)
		if err != nil {
			return nil, err
		}
		all = append(all, page...)
		if next == "" {
			return all, nil
		}
		token = next
	}
}

// indexView is one image index with what is installed in it, for applicability.
type indexView struct {
	index        *osvcv1.ImageIndex
	installed    map[string]bool // package identities and catalog update names
	supersededBy map[string]bool // identities superseded by installed packages
}

func newIndexView(idx *osvcv1.ImageIndex, byIdentity map[string]*osvcv1.Update) indexView {
	v := indexView{index: idx, installed: map[string]bool{}, supersededBy: map[string]bool{}}
	for _, inst := range idx.GetInstalledUpdates() {
		if id := inst.GetPackageIdentity(); id != "" {
			v.installed[id] = true
			if u := byIdentity[id]; u != nil {
				v.installed[u.GetName()] = true
				for _, s := range u.GetSupersedes() {
					v.supersededBy[s] = true
				}
			}
		}
		if name := inst.GetUpdate(); name != "" {
			v.installed[name] = true
		}
	}
	return v
}

func (v indexView) applies(u *osvcv1.Update) bool {
	switch u.GetArchitecture() {
	case osvcv1.Architecture_ARCHITECTURE_NEUTRAL, osvcv1.Architecture_ARCHITECTURE_UNSPECIFIED, v.index.GetArchitecture():
	default:
		return false
	}
	if builds := u.GetApplicableBuilds(); len(builds) > 0 && !slices.Contains(builds, v.index.GetBuild()) {
		return false
	}
	if v.installed[u.GetName()] {
		return false
	}
	if id := u.GetPackageIdentity(); id != "" && (v.installed[id] || v.supersededBy[id]) {
		return false
	}
	return true
}

// ListApplicableUpdates pages through ApplicableUpdates of the image named
// imageName. The page token names the last update returned and the image, so
// a token from another image's list is refused.
func (c *Catalog) ListApplicableUpdates(ctx context.Context, imageName string, f *osvcv1.UpdateFilter, pageSize int, token string) ([]*osvcv1.Update, string, error) {
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
	all, err := c.ApplicableUpdates(ctx, img, f)
	if err != nil {
		return nil, "", err
	}
	// Names sort like their keys, so the page starts after the token's name
	// even when that update has since been installed or removed.
	start, _ := slices.BinarySearchFunc(all, after, func(u *osvcv1.Update, name string) int {
		return strings.Compare(u.GetName(), name)
	})
	if start < len(all) && all[start].GetName() == after {
		start++
	}
	pageSize = clampPageSize(pageSize)
	end := min(start+pageSize, len(all))
	page := all[start:end]
	next := ""
	if end < len(all) {
		next = encodeApplicableToken(imageName, page[len(page)-1].GetName())
	}
	return page, next, nil
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
