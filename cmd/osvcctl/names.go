package main

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/osvc/osvc/pkg/names"
)

// Collections of the resource names osvcctl accepts.
const (
	collImages  = "images"
	collUpdates = "updates"
	collRuns    = "runs"
	collSites   = "sites"
)

// resourceName turns "ID" or "collection/ID" into "collection/ID". The server
// validates the ID itself; this only catches a name of the wrong kind, which
// would otherwise come back as a puzzling NotFound.
func resourceName(collection, arg string) (string, error) {
	singular := strings.TrimSuffix(collection, "s")
	id, hasPrefix := strings.CutPrefix(arg, collection+"/")
	if !hasPrefix && strings.Contains(arg, "/") {
		return "", usageErrorf("%s name %q: give ID or %s/ID", singular, arg, collection)
	}
	if id == "" || strings.Contains(id, "/") {
		return "", usageErrorf("%s name %q: give ID or %s/ID", singular, arg, collection)
	}
	return collection + "/" + id, nil
}

// updateName is resourceName for updates. IDs are lower-case, and KB numbers
// are habitually written upper-case (KB5031354), so the ID is lower-cased.
func updateName(arg string) (string, error) {
	return resourceName(collUpdates, strings.ToLower(arg))
}

// updateNotFoundHint tells how to find the ID of an update that is not there:
// by its KB number when the ID starts with one, since IDs carry an
// architecture suffix (kb5031354-x64) that is easy to leave out.
func updateNotFoundHint(name string) string {
	id := strings.TrimPrefix(name, collUpdates+"/")
	if digits, ok := strings.CutPrefix(id, "kb"); ok {
		n := 0
		for n < len(digits) && digits[n] >= '0' && digits[n] <= '9' {
			n++
		}
		if n > 0 {
			return fmt.Sprintf("'osvcctl update list --filter KB%s' finds its ID", digits[:n])
		}
	}
	return "'osvcctl update list' lists the imported updates"
}

// validateID checks an ID by the server's rule (package names) where a
// mistake would otherwise show only after a long upload.
func validateID(id string) error {
	if err := names.ValidateID(id); err != nil {
		return usageErrorf("ID %q: %v", id, err)
	}
	return nil
}

// defaultImageID derives an image ID from a file name: the base name without
// its extension, lower-cased, every other character than [a-z0-9] turned into
// '-', starting with a letter as the server requires.
func defaultImageID(path string) (string, error) {
	base := filepath.Base(path)
	base = strings.TrimSuffix(base, filepath.Ext(base))
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(base) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
			dash = false
			continue
		}
		if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	id := b.String()
	if id != "" && id[0] >= '0' && id[0] <= '9' {
		id = "image-" + id
	}
	if len(id) > names.MaxIDLen {
		id = id[:names.MaxIDLen]
	}
	id = strings.TrimRight(id, "-")
	if id == "" {
		return "", usageErrorf("cannot derive an image ID from file name %q: give --id", filepath.Base(path))
	}
	return id, nil
}
