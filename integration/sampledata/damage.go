package sampledata

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
)

// DamageBody overwrites 64 bytes in the middle of a WIM file's data, between
// its header and its lookup table and XML info, which stay intact: the file
// still reads as a WIM and its indexes are still described, but a blob no
// longer hashes to what the file records. It is how tests make the damaged
// image that only a full verification finds.
func DamageBody(wim string) error {
	f, err := os.OpenFile(wim, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("damage %s: %w", wim, err)
	}
	defer f.Close()
	hdr := make([]byte, 208)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		return fmt.Errorf("damage %s: read the header: %w", wim, err)
	}
	le := binary.LittleEndian
	// The lookup table's and the XML info's resource headers hold their offsets.
	end := min(le.Uint64(hdr[48+8:]), le.Uint64(hdr[72+8:]))
	if end < 208+256 {
		return errors.New("damage: the WIM holds too little data between its header and its tables")
	}
	at := int64(208 + (end-208)/2)
	junk := make([]byte, 64)
	if _, err := f.ReadAt(junk, at); err != nil {
		return fmt.Errorf("damage %s: %w", wim, err)
	}
	for i := range junk {
		junk[i] ^= 0xA5
	}
	if _, err := f.WriteAt(junk, at); err != nil {
		return fmt.Errorf("damage %s: %w", wim, err)
	}
	return f.Close()
}
