package drivesetting_test

import (
	"strings"
	"testing"

	"github.com/osvc/osvc/pkg/drivesetting"
)

func TestValidateKeepsWhatMeansTheSameOnEveryServer(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, setting, want, refusal string
	}{
		{"nothing is Automatic", "", drivesetting.Automatic, ""},
		{"automatic in any case is spelled Automatic", " aUTOMATIC ", drivesetting.Automatic, ""},
		{"a drive is kept as given", "D:", "D:", ""},
		{"a drive's root is kept", `d:\`, `d:\`, ""},
		{"a folder on a drive is kept, trimmed", ` D:\osvc `, `D:\osvc`, ""},
		{"a folder relative to a drive's root is kept", "D:work", "D:work", ""},
		{"an absolute folder of a Linux server is kept", "/srv/osvc", "/srv/osvc", ""},
		{"a relative folder is refused", "work", "", "relative folder"},
		{"a dotted relative folder is refused", "./work", "", "relative folder"},
		{"a network share is refused", `\\server\share`, "", "network share"},
		{"a share written with slashes is refused", "//server/share", "", "network share"},
		{"a control character is refused", "D:\\os\nvc", "", "control character"},
		{"a setting past the limit is refused", "/" + strings.Repeat("a", drivesetting.MaxLen), "", "over the limit"},
		{"what only starts like a drive is a relative folder", "1:", "", "relative folder"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := drivesetting.Validate(tt.setting)
			if tt.refusal != "" {
				if err == nil || !strings.Contains(err.Error(), tt.refusal) {
					t.Fatalf("Validate(%q) = %q, %v; want a refusal saying %q", tt.setting, got, err, tt.refusal)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("Validate(%q) = %q, %v; want %q", tt.setting, got, err, tt.want)
			}
		})
	}
}

func TestDriveLetterSplitsOnlyALetterAndAColon(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in, letter, rest string
		ok               bool
	}{
		{"d:", "D", "", true},
		{`D:\osvc`, "D", `\osvc`, true},
		{"1:", "", "", false},
		{"D", "", "", false},
		{"/srv", "", "", false},
	} {
		letter, rest, ok := drivesetting.DriveLetter(tt.in)
		if letter != tt.letter || rest != tt.rest || ok != tt.ok {
			t.Errorf("DriveLetter(%q) = %q, %q, %v; want %q, %q, %v", tt.in, letter, rest, ok, tt.letter, tt.rest, tt.ok)
		}
	}
}

func TestOnlyAFolderNamedFromTheCurrentOneIsRelative(t *testing.T) {
	t.Parallel()
	for setting, want := range map[string]bool{
		"work": true, "../work": true,
		"Automatic": false, "automatic": false, "": false,
		"D:": false, `d:\`: false, `D:\osvc`: false, "D:work": false,
		t.TempDir(): false,
	} {
		if got := drivesetting.Relative(setting); got != want {
			t.Errorf("Relative(%q) = %t, want %t", setting, got, want)
		}
	}
}
