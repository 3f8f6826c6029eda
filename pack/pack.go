// Package pack writes and reads packs (docs/format.md) and stores blobs in
// them: Store deduplicates through the index, compresses, encrypts, fills
// packs per blob type and uploads them concurrently.
package pack

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/cairn-backup/cairn/crypto"
	"github.com/cairn-backup/cairn/repo"
	"golang.org/x/sys/unix"
)

const (
	headerVersion = 1
	recordSize    = 1 + 32 + 4 + 4 + 4
	// MaxHeaderSize bounds a header read from a damaged or hostile pack.
	MaxHeaderSize = 16 << 20
)

var headerAD = []byte("cairn pack header")

// Writer assembles one pack, in memory (NewWriter) or in an unlinked
// temporary file (NewFileWriter), which keeps 16 MiB data packs out of the
// heap.
type Writer struct {
	Type  repo.BlobType
	buf   []byte // memory: the pack so far
	file  *os.File
	out   *fileOut
	size  int
	blobs []repo.PackedBlob
	err   error // the first write error of a file Writer
}

// NewWriter starts a pack for blobs of type t in memory, reusing buf's memory.
func NewWriter(t repo.BlobType, buf []byte) *Writer {
	return &Writer{Type: t, buf: buf[:0]}
}

// NewFileWriter starts a pack for blobs of type t in a temporary file in dir
// (empty: the system's), removed from the directory at once so that nothing
// outlives the process. direct writes it past the page cache where the file
// system allows (see fileOut): for a pack that is not read back.
func NewFileWriter(t repo.BlobType, dir string, direct bool) (*Writer, error) {
	f, err := openTemp(dir)
	if err != nil {
		return nil, fmt.Errorf("temporary pack file: %w", err)
	}
	return &Writer{Type: t, file: f, out: newFileOut(f, direct)}, nil
}

// openTemp opens a file in dir that has no name, so nothing is left behind
// whatever happens. Made with O_TMPFILE where the file system allows, it can
// still be linked into a local repository on the same file system instead
// of copied there.
func openTemp(dir string) (*os.File, error) {
	if dir == "" {
		dir = os.TempDir()
	}
	if fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600); err == nil {
		return os.NewFile(uintptr(fd), filepath.Join(dir, "cairn-pack")), nil
	}
	f, err := os.CreateTemp(dir, "cairn-pack-")
	if err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// Add appends a sealed blob.
func (w *Writer) Add(id repo.ID, sealed []byte, rawLength int) {
	w.blobs = append(w.blobs, repo.PackedBlob{
		Type: w.Type, ID: id, Offset: uint32(w.size),
		Length: uint32(len(sealed)), RawLength: uint32(rawLength),
	})
	w.write(sealed)
}

func (w *Writer) write(b []byte) {
	w.size += len(b)
	if w.file == nil {
		w.buf = append(w.buf, b...)
		return
	}
	if w.err == nil {
		w.err = w.out.write(b)
	}
}

// Size is the number of blob bytes so far.
func (w *Writer) Size() int { return w.size }

// Count is the number of blobs so far.
func (w *Writer) Count() int { return len(w.blobs) }

// Discard releases a Writer that will not be finished.
func (w *Writer) Discard() {
	if w.file != nil {
		w.out.release()
		w.file.Close()
	}
}

// Finished is a complete pack, ready to be stored.
type Finished struct {
	ID    repo.ID // the hash of Data: the pack's file name
	Size  int64
	Data  io.ReaderAt
	Blobs []repo.PackedBlob
	file  *os.File
}

// Close releases the pack's temporary file, if any.
func (f *Finished) Close() error {
	if f.file != nil {
		return f.file.Close()
	}
	return nil
}

// Finish appends the sealed header and its length and returns the whole
// pack. It decodes the header it sealed before handing it out. The Writer
// is used up either way.
func (w *Writer) Finish(key *crypto.Key) (*Finished, error) {
	plain := make([]byte, 0, 2+recordSize*len(w.blobs))
	plain = append(plain, 0, headerVersion) // encoding byte: raw; IDs do not compress
	for _, b := range w.blobs {
		plain = append(plain, byte(b.Type))
		plain = append(plain, b.ID[:]...)
		plain = binary.LittleEndian.AppendUint32(plain, b.Length)
		plain = binary.LittleEndian.AppendUint32(plain, b.RawLength)
		plain = append(plain, 0, 0, 0, 0)
	}
	trailer := key.Seal(nil, plain, headerAD)
	trailer = binary.LittleEndian.AppendUint32(trailer, uint32(len(trailer)))
	w.write(trailer)
	size := int64(w.size)
	got, err := ParseTrailer(key, trailer, size)
	if err == nil && len(got) != len(w.blobs) {
		err = errors.New("blob count differs")
	}
	if err != nil {
		w.Discard()
		return nil, fmt.Errorf("verify pack header: %w", err)
	}
	if w.file == nil {
		return &Finished{ID: repo.ID(crypto.Hash(w.buf)), Size: size, Data: bytes.NewReader(w.buf), Blobs: w.blobs}, nil
	}
	var id repo.ID
	if w.err == nil {
		id, w.err = w.out.flush()
	}
	if w.err != nil {
		w.Discard()
		return nil, fmt.Errorf("write temporary pack file: %w", w.err)
	}
	return &Finished{ID: id, Size: size, Data: w.file, Blobs: w.blobs, file: w.file}, nil
}

// TrailerSize returns how many bytes at the end of a pack of packSize bytes
// hold the header, given its last 4 bytes.
func TrailerSize(last4 []byte, packSize int64) (int64, error) {
	n := int64(binary.LittleEndian.Uint32(last4))
	if n < crypto.Overhead+2 || n > MaxHeaderSize || n+4 > packSize {
		return 0, fmt.Errorf("pack header length %d is invalid for a pack of %d bytes", n, packSize)
	}
	return n + 4, nil
}

// ParseTrailer decodes the header from tail, the last bytes of a pack of
// packSize bytes (tail must hold at least the whole header and its length).
func ParseTrailer(key *crypto.Key, tail []byte, packSize int64) ([]repo.PackedBlob, error) {
	if len(tail) < 4 {
		return nil, errors.New("pack is too short for a header")
	}
	n, err := TrailerSize(tail[len(tail)-4:], packSize)
	if err != nil {
		return nil, err
	}
	if int64(len(tail)) < n {
		return nil, errors.New("pack trailer is incomplete")
	}
	sealed := tail[int64(len(tail))-n : len(tail)-4]
	enc, err := key.Open(nil, sealed, headerAD)
	if err != nil {
		return nil, fmt.Errorf("decrypt pack header: %w", err)
	}
	plain, err := repo.Decode(nil, enc, MaxHeaderSize*2)
	if err != nil {
		return nil, fmt.Errorf("pack header: %w", err)
	}
	return DecodeHeader(plain, packSize-n)
}

// DecodeHeader parses a header's plaintext (after its encoding byte); the
// stored lengths must add up to headerOffset exactly.
func DecodeHeader(plain []byte, headerOffset int64) ([]repo.PackedBlob, error) {
	if len(plain) < 1 || plain[0] != headerVersion {
		return nil, errors.New("pack header: unknown version")
	}
	plain = plain[1:]
	if len(plain)%recordSize != 0 {
		return nil, fmt.Errorf("pack header: %d bytes is not a whole number of records", len(plain))
	}
	blobs := make([]repo.PackedBlob, 0, len(plain)/recordSize)
	var off int64
	for len(plain) > 0 {
		b := repo.PackedBlob{Type: repo.BlobType(plain[0])}
		if b.Type > repo.TreeBlob {
			return nil, fmt.Errorf("pack header: unknown blob type %d", plain[0])
		}
		copy(b.ID[:], plain[1:33])
		b.Length = binary.LittleEndian.Uint32(plain[33:])
		b.RawLength = binary.LittleEndian.Uint32(plain[37:])
		if b.Length < crypto.Overhead+1 {
			return nil, fmt.Errorf("pack header: blob %s has impossible length %d", b.ID.Short(), b.Length)
		}
		b.Offset = uint32(off)
		off += int64(b.Length)
		if off > headerOffset {
			return nil, errors.New("pack header: blobs overrun the header")
		}
		blobs = append(blobs, b)
		plain = plain[recordSize:]
	}
	if off != headerOffset {
		return nil, fmt.Errorf("pack header: blobs end at %d, header starts at %d", off, headerOffset)
	}
	return blobs, nil
}

// ReadHeader loads and decodes the header of a stored pack.
func ReadHeader(ctx context.Context, be repo.Backend, key *crypto.Key, id repo.ID) ([]repo.PackedBlob, error) {
	fi, err := be.Stat(ctx, repo.Handle{Type: repo.PackFile, Name: id.String()})
	if err != nil {
		return nil, err
	}
	return LoadHeader(ctx, be, key, id, fi.Size)
}
