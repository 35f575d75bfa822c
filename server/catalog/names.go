package catalog

import (
	"errors"
	"strconv"
	"strings"

	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/content"
)

const (
	imagesCollection  = "images/"
	updatesCollection = "updates/"
	// maxIDLen keeps ids usable as DNS labels and etcd key segments.
	maxIDLen = 63
)

// ImageName returns images/{id}.
func ImageName(id string) string { return imagesCollection + id }

// ImageID returns the id of images/{id}; InvalidArgument("name") on a bad name.
func ImageID(name string) (string, error) { return idFromName(name, imagesCollection) }

// UpdateName returns updates/{id}.
func UpdateName(id string) string { return updatesCollection + id }

// UpdateID returns the id of updates/{id}; InvalidArgument("name") on a bad name.
func UpdateID(name string) (string, error) { return idFromName(name, updatesCollection) }

func idFromName(name, collection string) (string, error) {
	id, ok := strings.CutPrefix(name, collection)
	if !ok {
		return "", errdefs.InvalidArgument("name", "want "+collection+"{id}, got "+quote(name))
	}
	if err := ValidateID(id); err != nil {
		return "", errdefs.InvalidArgument("name", "in "+quote(name)+": "+err.Error())
	}
	return id, nil
}

// ValidateID checks an id: lower-case letters, digits and '-', 1 to 63
// characters, starting with a letter. The error says what to send instead.
func ValidateID(id string) error {
	if id == "" {
		return errors.New("the id is empty; use lower-case letters, digits and '-', starting with a letter")
	}
	if len(id) > maxIDLen {
		return errors.New("the id is longer than 63 characters; use a shorter one")
	}
	if id[0] < 'a' || id[0] > 'z' {
		return errors.New("the id must start with a lower-case letter")
	}
	for i := 0; i < len(id); i++ {
		ch := id[i]
		if !(ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || ch == '-') {
			return errors.New("the id may hold only lower-case letters, digits and '-'")
		}
	}
	return nil
}

// ValidateSite checks a site code: three upper-case letters or digits, e.g. PS1.
func ValidateSite(site string) error {
	if len(site) != 3 {
		return errors.New("want a site code of three upper-case letters or digits, e.g. PS1, got " + quote(site))
	}
	for i := 0; i < len(site); i++ {
		ch := site[i]
		if !(ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9') {
			return errors.New("want a site code of three upper-case letters or digits, e.g. PS1, got " + quote(site))
		}
	}
	return nil
}

// validateSHA256 checks a content address the way the content library names
// blobs, with a message that says what to send.
func validateSHA256(sha string) error {
	if !content.ValidSHA256(sha) {
		return errors.New("want the 64 lower-case hex digits of a sha256, as ContentService.Write returned, got " + quote(sha))
	}
	return nil
}

// quote shows a user's value in an error message, shortened so a huge value
// does not flood the message.
func quote(s string) string {
	if len(s) > 80 {
		s = s[:80] + "..."
	}
	return strconv.Quote(s)
}
