package catalog

import (
	"errors"
	"strings"

	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/names"
	"github.com/osvc/osvc/server/content"
)

const (
	imagesCollection  = "images/"
	updatesCollection = "updates/"
	maxIDLen          = names.MaxIDLen
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

// ValidateID checks an id by the rule of package names.
func ValidateID(id string) error { return names.ValidateID(id) }

// ValidateSite checks a site code by the rule of package names.
func ValidateSite(site string) error { return names.ValidateSite(site) }

// validateSHA256 checks a content address the way the content library names
// blobs, with a message that says what to send.
func validateSHA256(sha string) error {
	if !content.ValidSHA256(sha) {
		return errors.New("want the 64 lower-case hex digits of a sha256, as ContentService.Write returned, got " + quote(sha))
	}
	return nil
}

// quote shows a user's value in an error message, shortened.
func quote(s string) string { return names.Quote(s) }
