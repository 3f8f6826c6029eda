// Package snapshot holds trees, nodes and snapshots, and the pipelines that
// make and read them: the Archiver (files → trees) and the restorer
// (trees → files).
package snapshot

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"
	"unicode/utf8"

	"github.com/cairn-backup/cairn/repo"
)

// Name is a byte string: a file name, link target or xattr name. In JSON it
// is a string when valid UTF-8 and {"b64":"…"} otherwise, so nothing is lost.
type Name []byte

func (n Name) MarshalJSON() ([]byte, error) {
	if utf8.Valid(n) {
		return json.Marshal(string(n))
	}
	return json.Marshal(struct {
		B64 string `json:"b64"`
	}{base64.StdEncoding.EncodeToString(n)})
}

func (n *Name) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*n = Name(s)
		return nil
	}
	var o struct {
		B64 *string `json:"b64"`
	}
	if err := json.Unmarshal(b, &o); err != nil {
		return err
	}
	if o.B64 == nil {
		return errors.New("name: want a string or {\"b64\":…}")
	}
	v, err := base64.StdEncoding.DecodeString(*o.B64)
	if err != nil {
		return fmt.Errorf("name: %w", err)
	}
	*n = v
	return nil
}

// Node types.
const (
	TypeFile    = "file"
	TypeDir     = "dir"
	TypeSymlink = "symlink"
	TypeDev     = "dev"
	TypeCharDev = "chardev"
	TypeFIFO    = "fifo"
	TypeSocket  = "socket"
)

// Xattr is one extended attribute.
type Xattr struct {
	Name  Name   `json:"name"`
	Value []byte `json:"value"`
}

// Node is one directory entry (docs/format.md, "Trees and snapshots").
type Node struct {
	Name     Name      `json:"name"`
	Type     string    `json:"type"`
	Mode     uint32    `json:"mode"`
	UID      uint32    `json:"uid"`
	GID      uint32    `json:"gid"`
	User     string    `json:"user,omitempty"`
	Group    string    `json:"group,omitempty"`
	Size     uint64    `json:"size,omitempty"`
	ModTime  time.Time `json:"mtime"`
	ATime    time.Time `json:"atime"`
	CTime    time.Time `json:"ctime"`
	Inode    uint64    `json:"inode,omitempty"`
	DeviceID uint64    `json:"device_id,omitempty"`
	Links    uint64    `json:"links,omitempty"`
	Rdev     uint64    `json:"rdev,omitempty"`
	Link     Name      `json:"link,omitempty"`
	Content  []repo.ID `json:"content,omitempty"`
	Subtree  *repo.ID  `json:"subtree,omitempty"`
	Xattrs   []Xattr   `json:"xattrs,omitempty"`
	Sparse   bool      `json:"sparse,omitempty"`
}

// Tree is one directory listing, stored as a tree blob.
type Tree struct {
	Nodes []*Node `json:"nodes"`
}

// Equal reports whether n and o describe the same entry: every field,
// times as instants. A tree whose nodes all equal its parent's is that tree.
func (n *Node) Equal(o *Node) bool {
	return bytes.Equal(n.Name, o.Name) && n.Type == o.Type && n.Mode == o.Mode &&
		n.UID == o.UID && n.GID == o.GID && n.User == o.User && n.Group == o.Group &&
		n.Size == o.Size && n.ModTime.Equal(o.ModTime) && n.ATime.Equal(o.ATime) &&
		n.CTime.Equal(o.CTime) && n.Inode == o.Inode && n.DeviceID == o.DeviceID &&
		n.Links == o.Links && n.Rdev == o.Rdev && bytes.Equal(n.Link, o.Link) &&
		slices.Equal(n.Content, o.Content) &&
		(n.Subtree == nil) == (o.Subtree == nil) && (n.Subtree == nil || *n.Subtree == *o.Subtree) &&
		slices.EqualFunc(n.Xattrs, o.Xattrs, func(a, b Xattr) bool {
			return bytes.Equal(a.Name, b.Name) && bytes.Equal(a.Value, b.Value)
		}) &&
		n.Sparse == o.Sparse
}

// Equal reports whether t and o hold equal nodes in the same order.
func (t *Tree) Equal(o *Tree) bool {
	return slices.EqualFunc(t.Nodes, o.Nodes, (*Node).Equal)
}

// Sort orders nodes by name bytes, as stored.
func (t *Tree) Sort() {
	sort.Slice(t.Nodes, func(i, j int) bool { return bytes.Compare(t.Nodes[i].Name, t.Nodes[j].Name) < 0 })
}

// Find returns the node called name, or nil. Nodes must be sorted.
func (t *Tree) Find(name []byte) *Node {
	i := sort.Search(len(t.Nodes), func(i int) bool { return bytes.Compare(t.Nodes[i].Name, name) >= 0 })
	if i < len(t.Nodes) && bytes.Equal(t.Nodes[i].Name, name) {
		return t.Nodes[i]
	}
	return nil
}

// Encode returns the tree blob's plaintext.
func (t *Tree) Encode() ([]byte, error) {
	if b, ok := encodeTreeFast(t); ok {
		return b, nil
	}
	return json.Marshal(t)
}

// DecodeTree parses a tree blob, rejecting names a restore could misuse.
// Names must be sorted and unique, as stored: a second entry of the same
// name (a symlink, then a directory or file under that name) would let a
// restore replace what it had just made.
func DecodeTree(b []byte) (*Tree, error) {
	t, ok := decodeTreeFast(b)
	if !ok {
		if err := json.Unmarshal(b, &t); err != nil {
			return nil, fmt.Errorf("decode tree: %w", err)
		}
	}
	for i, n := range t.Nodes {
		if n == nil {
			return nil, fmt.Errorf("decode tree: node %d is null", i)
		}
		if err := ValidName(n.Name); err != nil {
			return nil, fmt.Errorf("decode tree: %w", err)
		}
		if i > 0 {
			switch c := bytes.Compare(t.Nodes[i-1].Name, n.Name); {
			case c == 0:
				return nil, fmt.Errorf("decode tree: duplicate entry name %q", n.Name)
			case c > 0:
				return nil, fmt.Errorf("decode tree: entry %q is out of order (names must be sorted)", n.Name)
			}
		}
		if n.Type == TypeDir && n.Subtree == nil {
			return nil, fmt.Errorf("decode tree: directory %q has no subtree", n.Name)
		}
	}
	return &t, nil
}

// ValidName reports whether name can be one path element: not empty, not
// "." or "..", no '/' and no NUL.
func ValidName(name []byte) error {
	if len(name) == 0 || string(name) == "." || string(name) == ".." ||
		bytes.IndexByte(name, '/') >= 0 || bytes.IndexByte(name, 0) >= 0 {
		return fmt.Errorf("invalid entry name %q", name)
	}
	return nil
}
