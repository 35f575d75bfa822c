// Package drive finds the volume the agent services images on (which folder
// a drive setting means on this server), reads what the agent needs to know
// of it (its free and total space) and locks a folder on it for one agent,
// in the way each platform offers.
package drive

import "errors"

// Space is a volume's capacity as the agent's user may use it.
type Space struct {
	// Free is what the agent may still write; Total the volume's size.
	Free, Total int64
}

// ErrLocked is returned by Lock for a file another process holds locked.
var ErrLocked = errors.New("locked by another process")
