package auth

import (
	"os"
	"testing"

	"github.com/osvc/osvc/server/store/storetest"
)

// TestMain stops the embedded etcd the tests share and removes its directory.
func TestMain(m *testing.M) {
	code := m.Run()
	storetest.Close()
	os.Exit(code)
}
