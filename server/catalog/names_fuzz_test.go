package catalog

import (
	"strings"
	"testing"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

// Any uploaded file name must give a valid update id: it becomes an etcd key
// segment and a resource name.
func FuzzUpdateIDFromAnyFileName(f *testing.F) {
	for _, seed := range []string{
		"windows11.0-kb5031354-x64_2b1d3b1a.msu", "ndp481-kb5029921-x64-allos-enu.exe", "setup.exe",
		"", ".", "---", "9.exe", "KB.cab", "ÄÖÜ-kb1-arm64.msu", strings.Repeat("a", 300) + ".cab",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, name string) {
		u := &osvcv1.Update{
			Kb:           kbFromName(name),
			Architecture: archFromName(name),
			Files:        []*osvcv1.UpdateFile{{FileName: name}},
		}
		id := baseUpdateID(u)
		if err := ValidateID(id); err != nil {
			t.Fatalf("file %q gave id %q: %v", name, id, err)
		}
	})
}

// A name that parses gives back an id that makes the same name.
func FuzzImageIDRoundTrips(f *testing.F) {
	for _, seed := range []string{"images/win11", "images/", "images/a/b", "updates/x", "images/A", "images/a-1"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, name string) {
		id, err := ImageID(name)
		if err != nil {
			return
		}
		if ImageName(id) != name || ValidateID(id) != nil {
			t.Fatalf("ImageID(%q) = %q, which does not round-trip", name, id)
		}
	})
}

// A page token from the outside never panics and never names another list.
func FuzzApplicablePageToken(f *testing.F) {
	f.Add("images/win11", encodeApplicableToken("images/win11", "updates/kb1"))
	f.Add("images/win11", "!!")
	f.Add("images/win11", encodeApplicableToken("images/other", "updates/kb1"))
	f.Fuzz(func(t *testing.T, image, token string) {
		last, err := decodeApplicableToken(image, token)
		if err == nil && !strings.HasPrefix(last, updatesCollection) {
			t.Fatalf("token %q of %q gave %q, not an update name", token, image, last)
		}
	})
}
