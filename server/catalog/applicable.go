package catalog

import (
	"context"
	"encoding/base64"
	"slices"
	"strings"

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
			byIdentity[strings.ToLower(u.GetPackageIdentity())] = u
		}
	}
	indexes := make([]*applicability.Index, 0, len(image.GetIndexes()))
	for _, idx := range image.GetIndexes() {
		indexes = append(indexes, applicabilityIndex(idx, byIdentity))
	}
	var out []*osvcv1.Update
	for _, u := range all {
		if !match(u) {
			continue
		}
		p := applicabilityPackage(u)
		if slices.ContainsFunc(indexes, func(ix *applicability.Index) bool {
			v, _ := applicability.Check(p, ix)
			return v == applicability.Applies
		}) {
			out = append(out, u)
		}
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
