package server_test

import (
	"os"
	"testing"

	"github.com/osvc/osvc/server/content/s3store/s3test"
)

// TestMain stops the S3 server the tests share and removes its folder.
func TestMain(m *testing.M) {
	code := m.Run()
	s3test.Close()
	os.Exit(code)
}
