// Package index knows where every blob is stored. Index files in the
// repository are the truth; a bbolt database in the cache directory mirrors
// them so lookups need neither the network nor much memory.
package index

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cairn-backup/cairn/repo"
)

const fileVersion = 1

// PackEntries is one pack and the blobs it holds.
type PackEntries struct {
	Pack  repo.ID
	Blobs []repo.PackedBlob // Pack is implied
}

// File is the decoded plaintext of an index file (docs/format.md).
type File struct {
	Supersedes []repo.ID
	Packs      []PackEntries
}

// Encode serializes f.
func (f *File) Encode() []byte {
	n := 0
	for _, p := range f.Packs {
		n += 40 + len(p.Blobs)*45
	}
	b := make([]byte, 0, 16+32*len(f.Supersedes)+n)
	b = append(b, fileVersion)
	b = binary.AppendUvarint(b, uint64(len(f.Supersedes)))
	for _, id := range f.Supersedes {
		b = append(b, id[:]...)
	}
	for _, p := range f.Packs {
		b = append(b, p.Pack[:]...)
		b = binary.AppendUvarint(b, uint64(len(p.Blobs)))
		for _, e := range p.Blobs {
			b = append(b, byte(e.Type))
			b = append(b, e.ID[:]...)
			b = binary.AppendUvarint(b, uint64(e.Offset))
			b = binary.AppendUvarint(b, uint64(e.Length))
			b = binary.AppendUvarint(b, uint64(e.RawLength))
		}
	}
	return b
}

var errTruncated = errors.New("index file is truncated")

// DecodeFile parses an index file's plaintext.
func DecodeFile(b []byte) (*File, error) {
	if len(b) == 0 || b[0] != fileVersion {
		if len(b) == 0 {
			return nil, errTruncated
		}
		return nil, fmt.Errorf("index file version %d is not supported", b[0])
	}
	d := decoder{b: b[1:]}
	f := &File{}
	ns := d.uvarint()
	if ns > uint64(len(d.b)/32) {
		return nil, errTruncated
	}
	for i := uint64(0); i < ns; i++ {
		f.Supersedes = append(f.Supersedes, d.id())
	}
	for d.err == nil && len(d.b) > 0 {
		p := PackEntries{Pack: d.id()}
		nb := d.uvarint()
		if nb > uint64(len(d.b)/36) {
			return nil, errTruncated
		}
		p.Blobs = make([]repo.PackedBlob, 0, nb)
		for i := uint64(0); i < nb && d.err == nil; i++ {
			e := repo.PackedBlob{Pack: p.Pack}
			e.Type = repo.BlobType(d.byte())
			e.ID = d.id()
			e.Offset = d.u32()
			e.Length = d.u32()
			e.RawLength = d.u32()
			if e.Type > repo.TreeBlob {
				return nil, fmt.Errorf("index file: unknown blob type %d", e.Type)
			}
			p.Blobs = append(p.Blobs, e)
		}
		f.Packs = append(f.Packs, p)
	}
	if d.err != nil {
		return nil, d.err
	}
	return f, nil
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) byte() byte {
	if d.err != nil || len(d.b) < 1 {
		d.err = errTruncated
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) id() (id repo.ID) {
	if d.err != nil || len(d.b) < 32 {
		d.err = errTruncated
		return id
	}
	copy(id[:], d.b)
	d.b = d.b[32:]
	return id
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errTruncated
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) u32() uint32 {
	v := d.uvarint()
	if v > 1<<32-1 && d.err == nil {
		d.err = errors.New("index file: value out of range")
	}
	return uint32(v)
}
