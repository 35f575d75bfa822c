// Package names holds the rules for the names of osvc's resources, which the
// server checks and the agent and osvcctl check before they send one: an id
// (the last segment of images/{id}, updates/{id}, runs/{id}, agents/{id})
// and a site code.
package names

import (
	"errors"
	"strconv"
)

// MaxIDLen keeps ids usable as DNS labels and etcd key segments.
const MaxIDLen = 63

// idRule is what ValidateID's errors tell the user to send.
const idRule = "use 1 to 63 lower-case letters, digits and '-', starting with a letter"

// ValidateID checks an id: lower-case letters, digits and '-', 1 to 63
// characters, starting with a letter. The error says what to send instead.
func ValidateID(id string) error {
	ok := id != "" && len(id) <= MaxIDLen && id[0] >= 'a' && id[0] <= 'z'
	for i := 0; ok && i < len(id); i++ {
		ch := id[i]
		ok = ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || ch == '-'
	}
	if !ok {
		return errors.New(idRule)
	}
	return nil
}

// ValidateSite checks a site code: three upper-case letters or digits, e.g. PS1.
func ValidateSite(site string) error {
	if len(site) != 3 {
		return errors.New("want a site code of three upper-case letters or digits, e.g. PS1, got " + Quote(site))
	}
	for i := 0; i < len(site); i++ {
		ch := site[i]
		if !(ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9') {
			return errors.New("want a site code of three upper-case letters or digits, e.g. PS1, got " + Quote(site))
		}
	}
	return nil
}

// Quote shows a user's value in an error message, shortened so a huge value
// does not flood the message.
func Quote(s string) string {
	if len(s) > 80 {
		s = s[:80] + "..."
	}
	return strconv.Quote(s)
}
