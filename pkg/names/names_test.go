package names_test

import (
	"strings"
	"testing"

	"github.com/osvc/osvc/pkg/names"
)

func TestValidateID(t *testing.T) {
	t.Parallel()
	for id, ok := range map[string]bool{
		"win11-ent": true, "a": true, strings.Repeat("a", 63): true, "ps1-a2": true,
		"": false, strings.Repeat("a", 64): false, "1win": false, "-win": false, "Win11": false,
		"win_11": false, "win.11": false, "win/11": false, "wïn": false,
	} {
		if err := names.ValidateID(id); (err == nil) != ok {
			t.Errorf("ValidateID(%q) = %v, want ok %t", id, err, ok)
		}
	}
}

func TestValidateSite(t *testing.T) {
	t.Parallel()
	for site, ok := range map[string]bool{"PS1": true, "CAS": true, "000": true, "ps1": false, "PS": false, "PS12": false, "P-1": false, "": false} {
		if err := names.ValidateSite(site); (err == nil) != ok {
			t.Errorf("ValidateSite(%q) = %v, want ok %t", site, err, ok)
		}
	}
}
