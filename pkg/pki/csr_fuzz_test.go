package pki_test

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/pem"
	"strings"
	"testing"

	"github.com/osvc/osvc/pkg/pki"
)

func TestParseCSRRefusesWhatIsNotOneSignedRequestForAStrongKey(t *testing.T) {
	t.Parallel()
	_, good, err := pki.NewKeyAndCSR("agent-1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pki.ParseCSR(good); err != nil {
		t.Fatalf("a request osvc-agent makes: %v", err)
	}
	block, _ := pem.Decode(good)
	tampered := append([]byte{}, block.Bytes...)
	tampered[len(tampered)-5] ^= 0xFF // in the signature
	for name, data := range map[string][]byte{
		"empty":               nil,
		"not PEM":             []byte("hello"),
		"a certificate":       pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: block.Bytes}),
		"two requests":        append(append([]byte{}, good...), good...),
		"a bad signature":     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: tampered}),
		"over the size limit": []byte(strings.Repeat("A", pki.MaxCSRBytes+1)),
	} {
		if _, err := pki.ParseCSR(data); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FuzzParseCSR feeds certificate requests, real and mangled, to the parser
// an unauthenticated caller reaches (Enroll): it never panics, and what it
// accepts is one request with a valid signature over a key osvc allows.
func FuzzParseCSR(f *testing.F) {
	_, good, err := pki.NewKeyAndCSR("agent-1")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(append(append([]byte{}, good...), "trailing"...))
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		csr, err := pki.ParseCSR(data)
		if err != nil {
			return
		}
		if len(data) > pki.MaxCSRBytes {
			t.Fatalf("accepted %d bytes, over the limit", len(data))
		}
		if err := csr.CheckSignature(); err != nil {
			t.Fatalf("accepted a request whose signature does not check: %v", err)
		}
		switch k := csr.PublicKey.(type) {
		case *ecdsa.PublicKey:
			if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
				t.Fatalf("accepted an ECDSA key on %s", k.Curve.Params().Name)
			}
		case ed25519.PublicKey:
		case *rsa.PublicKey:
			if k.N.BitLen() < 2048 {
				t.Fatalf("accepted a %d-bit RSA key", k.N.BitLen())
			}
		default:
			t.Fatalf("accepted a %T key", csr.PublicKey)
		}
	})
}
