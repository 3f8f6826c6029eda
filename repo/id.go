package repo

import (
	"encoding/hex"
	"fmt"
)

// ID is a 32-byte content address: of a stored file (unkeyed BLAKE3 of its
// bytes) or of a blob (keyed BLAKE3 of its plaintext).
type ID [32]byte

// ParseID decodes 64 hex digits.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 64 {
		return id, fmt.Errorf("invalid id %q: want 64 hex digits", s)
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("invalid id %q: %w", s, err)
	}
	return id, nil
}

func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Short is the 8-hex-digit form shown to people.
func (id ID) Short() string { return hex.EncodeToString(id[:4]) }

// IsNull reports whether id is all zeros (no object).
func (id ID) IsNull() bool { return id == ID{} }

// MarshalText writes the hex form, so IDs are strings in JSON.
func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText reads the hex form.
func (id *ID) UnmarshalText(b []byte) error {
	v, err := ParseID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}
