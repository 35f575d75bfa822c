package store

import (
	"errors"
	"strings"
	"testing"

	"github.com/osvc/osvc/pkg/errdefs"
)

// FuzzPageToken checks that a page token from a client can never point a list
// outside its prefix, whatever its bytes.
func FuzzPageToken(f *testing.F) {
	const prefix = "/osvc/images/"
	f.Add(encodePageToken(prefix + "a"))
	f.Add(encodePageToken("/osvc/runs/a"))
	f.Add(encodePageToken(prefix))
	f.Add("%%%")
	f.Add("")
	f.Fuzz(func(t *testing.T, token string) {
		key, err := decodePageToken(prefix, token)
		if err != nil {
			var fv *errdefs.FieldViolation
			if !errors.As(err, &fv) || fv.Field != "page_token" {
				t.Fatalf("decodePageToken(%q) = %v, want a page_token violation", token, err)
			}
			return
		}
		if !strings.HasPrefix(key, prefix) || key == prefix {
			t.Fatalf("decodePageToken(%q) = %q, outside %q", token, key, prefix)
		}
		if encodePageToken(key) != token {
			t.Fatalf("token %q does not round-trip", token)
		}
	})
}
