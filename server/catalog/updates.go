package catalog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"github.com/google/uuid"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/cab"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/updatepkg"
	"github.com/osvc/osvc/server/store"
)

// updateNamespace seeds the name-based (version 5) UUIDs of updates, so the
// same package identity gets the same update_id on every server.
var updateNamespace = uuid.MustParse("6f1c9a52-3b0e-4d53-9d0e-8a3f2c7b5e41")

var (
	kbPattern   = regexp.MustCompile(`(?i)KB\d+`)
	archPattern = regexp.MustCompile(`(?i)(?:^|[^a-z0-9])(arm64|x64|amd64|x86)(?:[^a-z0-9]|$)`)
)

// maxFileNameLen is the longest file name Windows allows.
const maxFileNameLen = 255

// maxImportFiles bounds the work of one ImportUpdates request.
const maxImportFiles = 1000

// maxUpdateIDSuffix bounds the search for a free update id ("kb1-x64-2", "-3" …).
const maxUpdateIDSuffix = 100

// ImportUpdates records one update per file, in request order. Every file
// must be in the content library. Each is opened as an update package and
// described by its manifest (an MSU's own package, completed by its
// properties file); a file osvc does not read (an .exe, a driver or Quantum
// cabinet, an MSU that is a WIM) is recorded from its name (KB,
// architecture). Either way the update says which engines apply it and
// why the others report it UNSUPPORTED. A damaged CAB or MSU is refused.
// Importing a package identity (or, for other files, a sha256) already known
// returns the existing update. Files are checked before anything is written,
// so a bad file leaves the catalog as it was; each update is written with its
// identity index in one transaction.
func (c *Catalog) ImportUpdates(ctx context.Context, files []*osvcv1.UpdateFile) ([]*osvcv1.Update, error) {
	if len(files) == 0 {
		return nil, errdefs.InvalidArgument("files", "no files; send at least one file uploaded with ContentService.Write")
	}
	if len(files) > maxImportFiles {
		return nil, errdefs.InvalidArgument("files", fmt.Sprintf("%d files in one request; send at most %d at a time", len(files), maxImportFiles))
	}
	release, err := c.imports.Enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("import updates: %w", err)
	}
	defer release()
	candidates := make([]*osvcv1.Update, 0, len(files))
	for i, f := range files {
		u, err := c.readUpdateFile(ctx, fmt.Sprintf("files[%d]", i), f)
		if err != nil {
			return nil, err
		}
		candidates = append(candidates, u)
	}
	out := make([]*osvcv1.Update, 0, len(candidates))
	for _, u := range candidates {
		stored, err := c.storeUpdate(ctx, u)
		if err != nil {
			return nil, err
		}
		out = append(out, stored)
	}
	return out, nil
}

// readUpdateFile checks one file and describes the update it carries, without writing.
func (c *Catalog) readUpdateFile(ctx context.Context, field string, f *osvcv1.UpdateFile) (*osvcv1.Update, error) {
	name := f.GetFileName()
	if name == "" || name != filepath.Base(name) || strings.ContainsAny(name, `/\`) || name == "." || name == ".." ||
		strings.ContainsFunc(name, unicode.IsControl) || len(name) > maxFileNameLen {
		return nil, errdefs.InvalidArgument(field+".file_name", "want a plain file name such as windows11.0-kb5031354-x64.msu, got "+quote(name))
	}
	if err := validateSHA256(f.GetSha256()); err != nil {
		return nil, errdefs.InvalidArgument(field+".sha256", err.Error())
	}
	blob, err := c.content(ctx, f.GetSha256(), "upload "+name+" first with ContentService.Write / osvcctl update import")
	if err != nil {
		return nil, err
	}
	if f.GetSizeBytes() != 0 && f.GetSizeBytes() != blob.GetSizeBytes() {
		return nil, errdefs.InvalidArgument(field+".size_bytes",
			fmt.Sprintf("%s is %d bytes in the content library, not %d; send 0 or the right size", name, blob.GetSizeBytes(), f.GetSizeBytes()))
	}
	file := &osvcv1.UpdateFile{FileName: name, Sha256: blob.GetSha256(), SizeBytes: blob.GetSizeBytes()}
	now := timestamppb.New(c.now())

	// The same reading the engine installs from: a package it would refuse
	// is refused here, before anything is recorded. The reader needs a
	// file: on an object store, a temporary copy.
	path, done, err := c.lib.LocalFile(ctx, file.Sha256)
	if err != nil {
		return nil, fmt.Errorf("read update %s: %w", name, err)
	}
	defer done()
	pkg, err := updatepkg.OpenAs(path, name)
	switch {
	case errors.Is(err, updatepkg.ErrUnsupported):
		if isPackageName(name) && !isCabinet(path) && !(isMSUName(name) && updatepkg.IsWIM(path)) {
			return nil, errdefs.InvalidArgument(field, fmt.Sprintf("%s is named like an update package but is not a cabinet; upload the CAB or MSU again", name))
		}
		// Not a package osvc reads (an .exe, a driver or Quantum cabinet, an
		// MSU that is a WIM): recorded from its name so an administrator
		// can select it, as Configuration Manager lists it; the engines
		// apply it or report it UNSUPPORTED.
		engines, reason := enginesFor(name, nil, err)
		return &osvcv1.Update{
			UpdateId:          uuid.NewSHA1(updateNamespace, []byte(fileIdentity(file.Sha256))).String(),
			Revision:          1,
			Kb:                kbFromName(name),
			Title:             name,
			Classification:    osvcv1.Classification_CLASSIFICATION_UPDATE,
			Architecture:      archFromName(name),
			Files:             []*osvcv1.UpdateFile{file},
			CreateTime:        now,
			Engines:           engines,
			UnsupportedReason: reason,
		}, nil
	case errors.Is(err, updatepkg.ErrInvalid):
		return nil, errdefs.InvalidArgument(field, err.Error())
	case err != nil:
		return nil, fmt.Errorf("read update %s: %w", name, err)
	}
	m := pkg.Manifest
	identity := m.Identity.String()
	kb := normalizeKB(pkg.KB())
	arch := m.Architecture()
	if arch == osvcv1.Architecture_ARCHITECTURE_UNSPECIFIED {
		// An architecture the manifest spells in a way osvc does not know
		// (e.g. wow64) is left to the engine, like a neutral package.
		arch = osvcv1.Architecture_ARCHITECTURE_NEUTRAL
	}
	engines, reason := enginesFor(name, pkg, nil)
	u := &osvcv1.Update{
		UpdateId:          uuid.NewSHA1(updateNamespace, []byte(identity)).String(),
		Revision:          1,
		Kb:                kb,
		Title:             pkg.Title(),
		Classification:    m.Classification,
		Products:          pkg.Products(),
		Architecture:      arch,
		PackageIdentity:   identity,
		Supersedes:        slices.Clone(m.Supersedes),
		Files:             []*osvcv1.UpdateFile{file},
		ApplicableBuilds:  slices.Clone(m.ApplicableBuilds),
		MinBuild:          m.MinBuild,
		CreateTime:        now,
		Engines:           engines,
		UnsupportedReason: reason,
	}
	if !m.Released.IsZero() {
		u.ReleaseTime = timestamppb.New(m.Released)
	}
	return u, nil
}

// The engines' names, as agents announce them (Agent.engines).
const (
	engineDISM   = "dism"
	engineWimlib = "wimlib"
)

// enginesFor says which engines apply the update file name rather than
// report it UNSUPPORTED, and why the others do not, from what reading it
// gave: the package (pkg), or why osvc does not read it (unsupported). It
// follows what the engines do: the dism engine hands every CAB and MSU to
// dism.exe, which then decides; the wimlib engine installs the packages
// updatepkg reads that are in osvc's shape, and reports the others
// UNSUPPORTED with the same reasons.
func enginesFor(name string, pkg *updatepkg.Package, unsupported error) ([]string, string) {
	if !isPackageName(name) {
		return nil, name + " is not a CAB or MSU package: the dism engine applies CAB and MSU packages, the wimlib engine the packages osvc reads"
	}
	switch {
	case unsupported != nil:
		return []string{engineDISM}, "the wimlib engine does not read it: " + unsupported.Error()
	case len(pkg.NotInstallable) > 0:
		return []string{engineDISM}, "the wimlib engine does not install it: " + strings.Join(pkg.NotInstallable, "; ")
	}
	return []string{engineDISM, engineWimlib}, ""
}

func isPackageName(name string) bool {
	ext := strings.ToLower(filepath.Ext(name))
	return ext == ".cab" || ext == ".msu"
}

func isMSUName(name string) bool { return strings.EqualFold(filepath.Ext(name), ".msu") }

// isCabinet reports whether the file starts with a cabinet's signature.
func isCabinet(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	var head [4]byte
	if _, err := io.ReadFull(f, head[:]); err != nil {
		return false
	}
	return cab.IsCabinet(head[:])
}

// fileIdentity is the idempotency key of a file that is not a package. Package
// identities hold '~', so the two never collide.
func fileIdentity(sha string) string { return "sha256:" + sha }

func identityOf(u *osvcv1.Update) string {
	if u.GetPackageIdentity() != "" {
		return u.GetPackageIdentity()
	}
	return fileIdentity(u.GetFiles()[0].GetSha256())
}

// RecordUpdate records an update already described (no file is read), with
// its identity and target indexes, and returns it; an update whose identity
// is known returns the one recorded. The update keeps the id its name gives,
// or, without a name, gets one from its KB and architecture as imports do.
// ImportUpdates records what it read this way; tools and tests that make
// catalogs call it directly.
func (c *Catalog) RecordUpdate(ctx context.Context, u *osvcv1.Update) (*osvcv1.Update, error) {
	if len(u.GetFiles()) == 0 {
		return nil, errdefs.InvalidArgument("update.files", "an update has at least one file")
	}
	u = proto.Clone(u).(*osvcv1.Update)
	if u.GetName() == "" {
		return c.storeUpdate(ctx, u)
	}
	id, err := UpdateID(u.GetName())
	if err != nil {
		return nil, err
	}
	stored, wrote, err := c.storeUpdateAs(ctx, u, id)
	if err == nil && stored == nil && !wrote {
		return nil, fmt.Errorf("%s exists already: %w", u.GetName(), errdefs.ErrConflict)
	}
	return stored, err
}

// storeUpdate writes u under a free id together with its identity and
// target indexes, or returns the update already recorded for that identity.
func (c *Catalog) storeUpdate(ctx context.Context, u *osvcv1.Update) (*osvcv1.Update, error) {
	base := baseUpdateID(u)
	for n := 1; n <= maxUpdateIDSuffix; n++ {
		id := base
		if n > 1 {
			suffix := "-" + strconv.Itoa(n)
			id = strings.TrimRight(base[:min(len(base), maxIDLen-len(suffix))], "-") + suffix
		}
		stored, _, err := c.storeUpdateAs(ctx, u, id)
		if err != nil || stored != nil {
			return stored, err
		}
		// The id is taken by another update: try the next suffix.
	}
	return nil, fmt.Errorf("no free update id from %s after %d tries; rename the file: %w", base, maxUpdateIDSuffix, errdefs.ErrConflict)
}

// storeUpdateAs writes u as updates/{id} with its identity and target
// indexes. It returns the update recorded for u's identity (u itself when
// it wrote it, wrote true), or nil when the id is taken by another update.
func (c *Catalog) storeUpdateAs(ctx context.Context, u *osvcv1.Update, id string) (*osvcv1.Update, bool, error) {
	identity := identityOf(u)
	identityKey := c.store.UpdateIdentityKey(identity)
	u.Name = UpdateName(id)
	var existing *osvcv1.Update
	rev, err := c.store.Txn(ctx, "import update "+u.Name, func(tx *store.Tx) error {
		existing = nil
		indexed, ok, err := tx.Raw(identityKey)
		if err != nil {
			return err
		}
		if ok {
			existing, err = c.GetUpdate(ctx, UpdateName(string(indexed)))
			if err != nil {
				return fmt.Errorf("update %s is indexed but unreadable: %w", identity, err)
			}
			return nil
		}
		if _, taken, err := tx.Raw(c.store.UpdateKey(id)); err != nil || taken {
			return err
		}
		tx.PutRaw(identityKey, []byte(id))
		for _, k := range c.targetKeys(u, id) {
			tx.PutRaw(k, nil)
		}
		return tx.Put(c.store.UpdateKey(id), u)
	})
	switch {
	case err != nil:
		return nil, false, fmt.Errorf("import update %s: %w", u.Name, err)
	case existing != nil:
		c.logger.Debug("update already imported", "update", existing.Name, "identity", identity)
		return existing, false, nil
	case rev != 0:
		c.logger.Info("update imported", "update", u.Name, "kb", u.Kb, "identity", identity)
		return u, true, nil
	}
	return nil, false, nil
}

// baseUpdateID derives a readable id such as kb5031354-x64 from the KB and
// architecture, or from the file name when there is no KB.
func baseUpdateID(u *osvcv1.Update) string {
	var b strings.Builder
	if u.GetKb() != "" {
		b.WriteString(strings.ToLower(u.GetKb()))
	} else {
		name := strings.TrimSuffix(u.GetFiles()[0].GetFileName(), filepath.Ext(u.GetFiles()[0].GetFileName()))
		dash := true
		for _, r := range strings.ToLower(name) {
			switch {
			case r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
				b.WriteRune(r)
				dash = false
			case !dash:
				b.WriteByte('-')
				dash = true
			}
		}
	}
	id := strings.Trim(b.String(), "-")
	if suffix := archSuffix(u.GetArchitecture()); suffix != "" && !strings.HasSuffix(id, "-"+suffix) {
		id += "-" + suffix
	}
	if id == "" || id[0] < 'a' || id[0] > 'z' {
		id = "u-" + id
	}
	if len(id) > maxIDLen {
		id = strings.TrimRight(id[:maxIDLen], "-")
	}
	return id
}

func archSuffix(a osvcv1.Architecture) string {
	switch a {
	case osvcv1.Architecture_ARCHITECTURE_X86:
		return "x86"
	case osvcv1.Architecture_ARCHITECTURE_X64:
		return "x64"
	case osvcv1.Architecture_ARCHITECTURE_ARM64:
		return "arm64"
	}
	return ""
}

// normalizeKB writes a KB number as KB5031354, whatever case or prefix it came with.
func normalizeKB(kb string) string {
	kb = strings.TrimSpace(kb)
	if kb == "" {
		return ""
	}
	if m := kbPattern.FindString(kb); m != "" {
		return "KB" + m[2:]
	}
	if _, err := strconv.ParseUint(kb, 10, 64); err == nil {
		return "KB" + kb
	}
	return kb
}

func kbFromName(name string) string {
	if m := kbPattern.FindString(name); m != "" {
		return "KB" + m[2:]
	}
	return ""
}

func archFromName(name string) osvcv1.Architecture {
	m := archPattern.FindStringSubmatch(name)
	if m == nil {
		return osvcv1.Architecture_ARCHITECTURE_NEUTRAL
	}
	switch strings.ToLower(m[1]) {
	case "arm64":
		return osvcv1.Architecture_ARCHITECTURE_ARM64
	case "x64", "amd64":
		return osvcv1.Architecture_ARCHITECTURE_X64
	default:
		return osvcv1.Architecture_ARCHITECTURE_X86
	}
}

// GetUpdate returns the update named updates/{id}.
func (c *Catalog) GetUpdate(ctx context.Context, name string) (*osvcv1.Update, error) {
	id, err := UpdateID(name)
	if err != nil {
		return nil, err
	}
	u, _, err := store.Get[*osvcv1.Update](ctx, c.store, c.store.UpdateKey(id))
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil, fmt.Errorf("update %s: %w", name, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get update %s: %w", name, err)
	}
	return u, nil
}

// ListUpdates lists updates in name order, filtered by f (nil keeps all).
func (c *Catalog) ListUpdates(ctx context.Context, f *osvcv1.UpdateFilter, pageSize int, token string) ([]*osvcv1.Update, string, error) {
	match, err := newFilter(f)
	if err != nil {
		return nil, "", err
	}
	return listFiltered(ctx, c.store, c.store.UpdatesPrefix(), pageSize, token, match)
}

// newFilter checks f and returns its predicate: text is a case-insensitive
// substring of the KB, title or a product; an architecture keeps itself and
// NEUTRAL updates.
func newFilter(f *osvcv1.UpdateFilter) (func(*osvcv1.Update) bool, error) {
	text := strings.ToLower(strings.TrimSpace(f.GetText()))
	arch := f.GetArchitecture()
	if _, known := osvcv1.Architecture_name[int32(arch)]; !known {
		return nil, errdefs.InvalidArgument("filter.architecture", fmt.Sprintf("unknown architecture %d; send ARCHITECTURE_X86, X64, ARM64 or NEUTRAL", arch))
	}
	return func(u *osvcv1.Update) bool {
		if arch != osvcv1.Architecture_ARCHITECTURE_UNSPECIFIED &&
			u.GetArchitecture() != arch && u.GetArchitecture() != osvcv1.Architecture_ARCHITECTURE_NEUTRAL {
			return false
		}
		if text == "" {
			return true
		}
		if strings.Contains(strings.ToLower(u.GetKb()), text) || strings.Contains(strings.ToLower(u.GetTitle()), text) {
			return true
		}
		for _, p := range u.GetProducts() {
			if strings.Contains(strings.ToLower(p), text) {
				return true
			}
		}
		return false
	}, nil
}

// Reindex writes the identity and target index keys of every update, for
// data stored before those indexes existed. It is idempotent.
func (c *Catalog) Reindex(ctx context.Context) (int, error) {
	n, token := 0, ""
	for {
		page, next, err := store.List[*osvcv1.Update](ctx, c.store, c.store.UpdatesPrefix(), maxPageSize, token)
		if err != nil {
			return n, fmt.Errorf("reindex updates: %w", err)
		}
		for _, u := range page {
			id, err := UpdateID(u.GetName())
			if err != nil || len(u.GetFiles()) == 0 {
				c.logger.Warn("update not reindexed: bad name or no file", "update", u.GetName())
				continue
			}
			ops := []clientv3.Op{clientv3.OpPut(c.store.UpdateIdentityKey(identityOf(u)), id)}
			for _, k := range c.targetKeys(u, id) {
				ops = append(ops, clientv3.OpPut(k, ""))
			}
			if _, err := c.store.Client().Txn(ctx).Then(ops...).Commit(); err != nil {
				return n, fmt.Errorf("reindex %s: %w", u.GetName(), err)
			}
			n++
		}
		if next == "" {
			return n, nil
		}
		token = next
	}
}

// LinkInstalled names the catalog update of every installed package of
// indexes that the catalog knows by its identity, whichever run installed
// it: an agent links only the updates of its own run, so without this an
// image would lose the links of what earlier runs installed.
func (c *Catalog) LinkInstalled(ctx context.Context, indexes []*osvcv1.ImageIndex) error {
	var keys []string
	for _, idx := range indexes {
		for _, inst := range idx.GetInstalledUpdates() {
			if inst.GetPackageIdentity() != "" {
				keys = append(keys, c.store.UpdateIdentityKey(inst.GetPackageIdentity()))
			}
		}
	}
	slices.Sort(keys)
	keys = slices.Compact(keys)
	kvs, err := store.GetManyRaw(ctx, c.store, keys)
	if err != nil {
		return fmt.Errorf("link installed updates: %w", err)
	}
	ids := make(map[string]string, len(keys))
	for i, kv := range kvs {
		if kv != nil {
			ids[keys[i]] = string(kv.Value)
		}
	}
	for _, idx := range indexes {
		for _, inst := range idx.GetInstalledUpdates() {
			if id, ok := ids[c.store.UpdateIdentityKey(inst.GetPackageIdentity())]; ok && inst.GetPackageIdentity() != "" {
				inst.Update = UpdateName(id)
			}
		}
	}
	return nil
}

// DeleteUpdate removes the update named name with its identity and target
// indexes, in one transaction; its files are left to the content collector.
// Whether something still uses it is the caller's to check.
func (c *Catalog) DeleteUpdate(ctx context.Context, name string) error {
	id, err := UpdateID(name)
	if err != nil {
		return err
	}
	key := c.store.UpdateKey(id)
	_, err = c.store.Txn(ctx, "delete "+name, func(tx *store.Tx) error {
		u, err := store.Load[*osvcv1.Update](tx, key)
		if errors.Is(err, errdefs.ErrNotFound) {
			return fmt.Errorf("update %s: %w", name, errdefs.ErrNotFound)
		}
		if err != nil {
			return err
		}
		tx.Delete(key)
		for _, k := range c.targetKeys(u, id) {
			tx.Delete(k)
		}
		if len(u.GetFiles()) == 0 {
			return nil
		}
		// The identity index names this update unless it was imported
		// again meanwhile under another id.
		identityKey := c.store.UpdateIdentityKey(identityOf(u))
		if indexed, ok, err := tx.Raw(identityKey); err != nil {
			return err
		} else if ok && string(indexed) == id {
			tx.Delete(identityKey)
		}
		return nil
	}, store.Prefetch(key))
	if err != nil {
		return err
	}
	c.logger.Info("update deleted: its files are left to the content collector", "update", name)
	return nil
}
