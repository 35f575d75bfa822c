package api_test

import (
	"os"
	"testing"

	"github.com/osvc/osvc/server/content/s3store/s3test"
	"github.com/osvc/osvc/server/store/storetest"
)

// TestMain stops the embedded etcd and the S3 server the tests share and
// removes their directories.
func TestMain(m *testing.M) {
	code := m.Run()
	storetest.Close()
	s3test.Close()
	os.Exit(code)
}
