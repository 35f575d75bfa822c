// Package drivesetting reads an offline servicing drive setting the way a
// site stores it and the agent's --drive flag takes it: Automatic, a
// Windows drive (D: or D:\, any case: the drive's root), a folder on a drive
// (D:\osvc) or a folder. The agent turns a setting into a folder of its
// server (package agent/drive); the server checks the settings a site
// stores with Validate, so both halves read a setting the same way.
package drivesetting

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"unicode"

	"github.com/osvc/osvc/pkg/names"
)

// Automatic is the setting that means the drive the agent is installed on,
// as Configuration Manager's offline servicing drive does.
const Automatic = "Automatic"

// MaxLen bounds a stored setting: far more than a drive and a folder need.
const MaxLen = 512

// IsAutomatic tells a setting that means Automatic: the word in any case,
// or nothing at all.
func IsAutomatic(setting string) bool {
	s := strings.TrimSpace(setting)
	return s == "" || strings.EqualFold(s, Automatic)
}

// DriveLetter splits a setting that starts with a drive letter, "D:...",
// into the upper-case letter and the rest.
func DriveLetter(s string) (letter, rest string, ok bool) {
	if len(s) < 2 || s[1] != ':' {
		return "", "", false
	}
	c := s[0] &^ 0x20 // upper case, for ASCII letters
	if c < 'A' || c > 'Z' {
		return "", "", false
	}
	return string(c), s[2:], true
}

// Relative tells a setting that names a folder relative to the current
// folder of this machine: not Automatic, not a drive (D:, D:\osvc) and not
// an absolute path here.
func Relative(setting string) bool {
	s := strings.TrimSpace(setting)
	if IsAutomatic(s) {
		return false
	}
	if _, _, ok := DriveLetter(s); ok {
		return false
	}
	return !filepath.IsAbs(s)
}

// Validate checks a setting a site stores for every server of the site and
// returns it as stored: spaces around it trimmed, Automatic (or nothing)
// spelled Automatic. What it accepts means the same on every server:
// Automatic, a drive or a folder on one (D:, D:\osvc), or an absolute folder
// of a Linux server (/srv/osvc). A relative folder would mean a folder of
// each agent's current folder, so it is refused; so are network shares,
// where DISM cannot mount an image, and control characters.
func Validate(setting string) (string, error) {
	s := strings.TrimSpace(setting)
	if IsAutomatic(s) {
		return Automatic, nil
	}
	if len(s) > MaxLen {
		return "", fmt.Errorf("%d bytes, over the limit of %d: give %s, a drive such as D: or a folder such as D:\\osvc", len(s), MaxLen, Automatic)
	}
	if strings.IndexFunc(s, unicode.IsControl) >= 0 {
		return "", fmt.Errorf("%s holds a control character: give %s, a drive such as D: or a folder such as D:\\osvc", names.Quote(s), Automatic)
	}
	if _, _, ok := DriveLetter(s); ok {
		return s, nil
	}
	switch {
	case strings.HasPrefix(s, `\\`) || strings.HasPrefix(s, "//"):
		return "", fmt.Errorf("%s is a network share, where an image cannot be mounted: give a local drive such as D: or %s", names.Quote(s), Automatic)
	case strings.HasPrefix(s, "/"):
		return s, nil
	}
	return "", errors.New(names.Quote(s) + " is a relative folder, which would mean another folder on each server: give " + Automatic + ", a drive such as D:, a folder on a drive such as D:\\osvc, or an absolute folder such as /srv/osvc")
}
