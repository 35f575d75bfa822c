package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
)

// Kinds of secret, the second field of a secret's text.
const (
	kindToken = "tok"
	kindJoin  = "join"
)

// maxSecretLen bounds a secret's text before it is parsed: ours are 72
// characters.
const maxSecretLen = 128

// A secret's text is "osvc.<kind>.<id>.<key>": id is 16 lower-case hex
// digits naming the record in etcd, key 43 characters of unpadded
// base64url, 256 random bits of which only the SHA-256 is stored.
const (
	idLen  = 16
	keyLen = 43
)

// newSecret makes a secret of kind: its id, its text and the SHA-256 of its key.
func newSecret(kind string) (id, text string, sum []byte) {
	var raw [8 + 32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		panic(err) // crypto/rand does not fail
	}
	id = hex.EncodeToString(raw[:8])
	key := base64.RawURLEncoding.EncodeToString(raw[8:])
	h := sha256.Sum256([]byte(key))
	return id, "osvc." + kind + "." + id + "." + key, h[:]
}

// errMalformed is every parse failure: the caller says what was expected.
var errMalformed = errors.New("malformed")

// parseSecret splits a secret's text into its id and the SHA-256 of its
// key, refusing anything not of kind and shape.
func parseSecret(kind, text string) (id string, sum []byte, err error) {
	if len(text) > maxSecretLen {
		return "", nil, errMalformed
	}
	parts := strings.Split(text, ".")
	if len(parts) != 4 || parts[0] != "osvc" || parts[1] != kind || len(parts[2]) != idLen || len(parts[3]) != keyLen {
		return "", nil, errMalformed
	}
	for _, c := range parts[2] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return "", nil, errMalformed
		}
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[3])
	if err != nil || len(raw) != 32 {
		return "", nil, errMalformed
	}
	h := sha256.Sum256([]byte(parts[3]))
	return parts[2], h[:], nil
}

// sameSum compares two digests in constant time.
func sameSum(a, b []byte) bool { return len(a) == sha256.Size && subtle.ConstantTimeCompare(a, b) == 1 }
