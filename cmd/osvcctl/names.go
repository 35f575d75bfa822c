package main

import (
	"fmt"
	"path/filepath"
	"strings"
)

// Collections of the resource names osvcctl accepts.
const (
	collImages  = "images"
	collUpdates = "updates"
	collRuns    = "runs"
)

// maxIDLength is the longest ID the server accepts.
const maxIDLength = 63

// resourceName turns "ID" or "collection/ID" into "collection/ID". The server
// validates the ID itself; this only catches a name of the wrong kind, which
// would otherwise come back as a puzzling NotFound.
func resourceName(collection, arg string) (string, error) {
	singular := strings.TrimSuffix(collection, "s")
	id, hasPrefix := strings.CutPrefix(arg, collection+"/")
	if !hasPrefix && strings.Contains(arg, "/") {
		return "", fmt.Errorf("%s name %q: give ID or %s/ID", singular, arg, collection)
	}
	if id == "" || strings.Contains(id, "/") {
		return "", fmt.Errorf("%s name %q: give ID or %s/ID", singular, arg, collection)
	}
	return collection + "/" + id, nil
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
	if len(id) > maxIDLength {
		id = id[:maxIDLength]
	}
	id = strings.TrimRight(id, "-")
	if id == "" {
		return "", fmt.Errorf("cannot derive an image ID from file name %q: give --id", filepath.Base(path))
	}
	return id, nil
}
