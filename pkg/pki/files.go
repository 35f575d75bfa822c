package pki

import (
	"fmt"
	"io"
	"os"
	"strings"
)

// MaxSecretFileBytes bounds what is read of a file holding one secret (a
// token, a join token, a password): ours are under 100 bytes.
const MaxSecretFileBytes = 4 << 10

// ReadSecretFile reads a file that holds only a secret, without its
// trailing line ending; one that is empty or over MaxSecretFileBytes is
// refused, saying so.
func ReadSecretFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxSecretFileBytes+1))
	if err != nil {
		return "", err
	}
	if len(data) > MaxSecretFileBytes {
		return "", fmt.Errorf("%s is over %d bytes: it should hold only the secret", path, MaxSecretFileBytes)
	}
	secret := strings.TrimRight(string(data), "\r\n")
	if secret == "" {
		return "", fmt.Errorf("%s is empty: put the secret in it", path)
	}
	return secret, nil
}

// WriteFile writes data to path with perm through a temporary file in the
// same folder, synced and renamed into place: a crash never leaves half a
// file, and an older file at path, whatever its mode, is replaced.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	return writeFile(path, data, perm)
}
