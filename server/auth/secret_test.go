package auth

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"testing"
)

// splitSecret returns the id and key of a secret text newSecret made.
func splitSecret(t testing.TB, text string) (id, key string) {
	t.Helper()
	parts := strings.Split(text, ".")
	if len(parts) != 4 {
		t.Fatalf("secret %q: want 4 dot-separated parts", text)
	}
	return parts[2], parts[3]
}

func TestParseSecret(t *testing.T) {
	t.Parallel()
	id, text, sum := newSecret(kindToken)
	_, key := splitSecret(t, text)
	_, joinText, _ := newSecret(kindJoin)
	_, otherText, _ := newSecret(kindToken)
	_, otherKey := splitSecret(t, otherText)

	for _, tc := range []struct {
		name string
		kind string
		text string
		ok   bool
	}{
		{name: "a secret newSecret made is read back", kind: kindToken, text: text, ok: true},
		{name: "a join secret is read back as a join secret", kind: kindJoin, text: joinText, ok: true},
		{name: "a join secret is not a bearer token", kind: kindToken, text: joinText},
		{name: "a bearer token is not a join secret", kind: kindJoin, text: text},
		{name: "another prefix is refused", kind: kindToken, text: "osvx.tok." + id + "." + key},
		{name: "an empty text is refused", kind: kindToken, text: ""},
		{name: "three parts are refused", kind: kindToken, text: "osvc.tok." + id},
		{name: "a fifth part is refused", kind: kindToken, text: text + ".x"},
		{name: "a trailing newline is refused", kind: kindToken, text: text + "\n"},
		{name: "an id one digit short is refused", kind: kindToken, text: "osvc.tok." + id[1:] + "." + key},
		{name: "an id one digit long is refused", kind: kindToken, text: "osvc.tok.0" + id + "." + key},
		{name: "an id of non-hex letters is refused", kind: kindToken, text: "osvc.tok.ghijklmnopqrstuv." + key},
		{name: "an id in upper-case hex is refused", kind: kindToken, text: "osvc.tok.ABCDEF0123456789." + key},
		{name: "a key one character short is refused", kind: kindToken, text: "osvc.tok." + id + "." + key[1:]},
		{name: "a key one character long is refused", kind: kindToken, text: "osvc.tok." + id + "." + key + "A"},
		{name: "a key in the standard base64 alphabet is refused", kind: kindToken, text: "osvc.tok." + id + ".+" + key[1:]},
		{name: "a padded key is refused", kind: kindToken, text: "osvc.tok." + id + "." + key[:42] + "="},
		// The decoder skips newlines, so this key decodes to 31 bytes:
		// only the decoded length tells it from a real one.
		{name: "a key with a newline in it is refused", kind: kindToken, text: "osvc.tok." + id + "." + key[:42] + "\n"},
		{name: "another key with the same id parses to another digest", kind: kindToken, text: "osvc.tok." + id + "." + otherKey, ok: true},
		{name: "a text over the length limit is refused", kind: kindToken, text: text + strings.Repeat(".", maxSecretLen)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			gotID, gotSum, err := parseSecret(tc.kind, tc.text)
			if !tc.ok {
				if err == nil {
					t.Fatalf("parseSecret(%q, %q) = %q, nil; want an error", tc.kind, tc.text, gotID)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseSecret(%q, %q): %v", tc.kind, tc.text, err)
			}
			parts := strings.Split(tc.text, ".")
			if gotID != parts[2] {
				t.Errorf("id = %q, want %q", gotID, parts[2])
			}
			want := sha256.Sum256([]byte(parts[3]))
			if !bytes.Equal(gotSum, want[:]) {
				t.Errorf("sum = %x, want the SHA-256 of the key %x", gotSum, want)
			}
		})
	}

	t.Run("the digest parsed from a secret is the one newSecret stored", func(t *testing.T) {
		t.Parallel()
		gotID, gotSum, err := parseSecret(kindToken, text)
		if err != nil {
			t.Fatal(err)
		}
		if gotID != id || !sameSum(sum, gotSum) {
			t.Fatalf("parseSecret = %q, %x; newSecret made %q, %x", gotID, gotSum, id, sum)
		}
		_, otherSum, err := parseSecret(kindToken, "osvc.tok."+id+"."+otherKey)
		if err != nil {
			t.Fatal(err)
		}
		if sameSum(sum, otherSum) {
			t.Fatal("another key with the same id matches the stored digest")
		}
	})
}

// The length limit bounds the work an attacker's text costs: a huge text
// is refused before it is split, so refusing it allocates nothing.
// AllocsPerRun counts allocations process-wide, so this test is not
// parallel; averaged over many runs, the few of etcd's goroutines round
// down to none.
func TestParseSecretRefusesAHugeTextBeforeSplittingIt(t *testing.T) {
	huge := strings.Repeat(".", 1<<16)
	allocs := testing.AllocsPerRun(1000, func() {
		if _, _, err := parseSecret(kindToken, huge); err == nil {
			t.Fatal("a huge text parsed")
		}
	})
	if allocs != 0 {
		t.Fatalf("refusing a %d-byte text allocated %v times per call; want it refused by its length alone", len(huge), allocs)
	}
}

func TestNewSecretMakesDistinctSecretsOfTheDocumentedShape(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 100 {
		id, text, _ := newSecret(kindJoin)
		if seen[id] {
			t.Fatalf("id %s made twice", id)
		}
		seen[id] = true
		checkSecretShape(t, kindJoin, text, id)
	}
}

// checkSecretShape fails unless text is "osvc.<kind>.<16 lower-hex>.<43
// base64url characters of 32 bytes>" with id as its id.
func checkSecretShape(t testing.TB, kind, text, id string) {
	t.Helper()
	parts := strings.Split(text, ".")
	if len(parts) != 4 {
		t.Fatalf("%q: %d dot-separated parts, want 4", text, len(parts))
	}
	if parts[0] != "osvc" || parts[1] != kind {
		t.Fatalf("%q: starts %q.%q, want osvc.%s", text, parts[0], parts[1], kind)
	}
	if len(parts[2]) != idLen || strings.Trim(parts[2], "0123456789abcdef") != "" {
		t.Fatalf("%q: id %q is not %d lower-case hex digits", text, parts[2], idLen)
	}
	if parts[2] != id {
		t.Fatalf("%q: id %q, want %q", text, parts[2], id)
	}
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	if len(parts[3]) != keyLen || strings.Trim(parts[3], alphabet) != "" {
		t.Fatalf("%q: key %q is not %d base64url characters", text, parts[3], keyLen)
	}
	if raw, err := base64.RawURLEncoding.DecodeString(parts[3]); err != nil || len(raw) != 32 {
		t.Fatalf("%q: key decodes to %d bytes (%v), want 32", text, len(raw), err)
	}
}

func FuzzParseSecret(f *testing.F) {
	_, tok, _ := newSecret(kindToken)
	_, join, _ := newSecret(kindJoin)
	f.Add(tok)
	f.Add(join)
	f.Add(tok + "\n")
	f.Add("osvc.tok.0123456789abcdef.")
	f.Add("osvc...")
	f.Add("")
	f.Fuzz(func(t *testing.T, text string) {
		for _, kind := range []string{kindToken, kindJoin} {
			id, sum, err := parseSecret(kind, text)
			if err != nil {
				continue
			}
			checkSecretShape(t, kind, text, id)
			want := sha256.Sum256([]byte(strings.Split(text, ".")[3]))
			if !sameSum(want[:], sum) {
				t.Fatalf("%q: sum %x, want the SHA-256 of its key %x", text, sum, want)
			}
		}
	})
}
