package pack

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/cairn-backup/cairn/crypto"
	"github.com/cairn-backup/cairn/repo"
	"github.com/zeebo/blake3"
)

// DamageError says that a stored pack's bytes are wrong: its header does not
// decode. Any other error from LoadHeader means the pack could not be read
// at all, which says nothing about its content.
type DamageError struct {
	Pack repo.ID
	Err  error
}

func (e *DamageError) Error() string { return fmt.Sprintf("pack %s: %v", e.Pack.Short(), e.Err) }
func (e *DamageError) Unwrap() error { return e.Err }

// LoadHeader reads and decodes the header of pack id, whose size is known
// from a listing (which spares ReadHeader's Stat). A header that does not
// decode is a *DamageError.
func LoadHeader(ctx context.Context, be repo.Backend, key *crypto.Key, id repo.ID, size int64) ([]repo.PackedBlob, error) {
	h := repo.Handle{Type: repo.PackFile, Name: id.String()}
	if size < 4 {
		return nil, &DamageError{id, fmt.Errorf("%d bytes is too short for a header", size)}
	}
	guess := min(size, 64<<10)
	tail, err := repo.ReadAt(ctx, be, h, size-guess, int(guess), nil)
	if err != nil {
		return nil, fmt.Errorf("read pack %s header: %w", id.Short(), err)
	}
	n, err := TrailerSize(tail[len(tail)-4:], size)
	if err != nil {
		return nil, &DamageError{id, err}
	}
	if n > guess {
		if tail, err = repo.ReadAt(ctx, be, h, size-n, int(n), nil); err != nil {
			return nil, fmt.Errorf("read pack %s header: %w", id.Short(), err)
		}
	}
	blobs, err := ParseTrailer(key, tail, size)
	if err != nil {
		return nil, &DamageError{id, err}
	}
	for i := range blobs {
		blobs[i].Pack = id
	}
	return blobs, nil
}

// Content is what ReadPack found in a whole pack.
type Content struct {
	Size      int64
	Hash      repo.ID           // of the stored bytes: the pack's name when it is intact
	Header    []repo.PackedBlob // decoded from the pack's end; nil when HeaderErr is set
	HeaderErr error
}

// errShort means the pack ended before a blob or range that should be in it.
var errShort = errors.New("pack ends early")

// ReadPack downloads pack id once, from start to end, and calls fn for each
// of blobs (sorted by offset) in turn: with the blob's sealed bytes when it
// authenticates, decompresses and matches its ID, else with the error that
// says why not. sealed is only valid during the call. fn is called once per
// blob even when a failed download is retried, and an error of fn stops the
// read and is returned. Any other error means the pack could not be read;
// damage shows in fn's errors and in the returned Content.
func ReadPack(ctx context.Context, be repo.Backend, key *crypto.Key, id repo.ID, blobs []repo.PackedBlob,
	fn func(b repo.PackedBlob, sealed []byte, err error) error) (Content, error) {
	h := repo.Handle{Type: repo.PackFile, Name: id.String()}
	reported := 0 // blobs fn has heard about, over all attempts
	var sealed, plain []byte
	var c Content
	var fnErr error
	err := be.Load(ctx, h, 0, 0, func(rd io.Reader) error {
		r := &hashingReader{r: rd, h: crypto.NewHasher()}
		for i, b := range blobs {
			b.Pack = id
			var berr error
			switch {
			case int64(b.Offset) < r.n:
				berr = fmt.Errorf("%s blob %s in pack %s: offset %d overlaps the blob before it", b.Type, b.ID.Short(), id.Short(), b.Offset)
			default:
				err := r.skip(int64(b.Offset) - r.n)
				if err == nil {
					sealed = growBuf(sealed, int(b.Length))
					err = r.full(sealed)
				}
				switch {
				case errors.Is(err, errShort):
					berr = fmt.Errorf("%s blob %s in pack %s: offset %d length %d lies beyond the end of the pack", b.Type, b.ID.Short(), id.Short(), b.Offset, b.Length)
				case err != nil:
					return err // the download failed: the backend may retry
				default:
					plain, berr = OpenBlob(key, b, sealed, plain)
				}
			}
			if i < reported {
				continue // heard in an attempt that failed later
			}
			reported = i + 1
			var s []byte
			if berr == nil {
				s = sealed
			}
			if fnErr = fn(b, s, berr); fnErr != nil {
				return fnErr
			}
		}
		// The rest is the header (and whatever else is there).
		tail, err := r.rest(MaxHeaderSize + 4)
		if err != nil {
			return err
		}
		c = Content{Size: r.n}
		r.h.Sum(c.Hash[:0])
		c.Header, c.HeaderErr = ParseTrailer(key, tail, r.n)
		for i := range c.Header {
			c.Header[i].Pack = id
		}
		return nil
	})
	if fnErr != nil {
		return c, fnErr
	}
	if err != nil {
		return c, fmt.Errorf("read pack %s: %w", id.Short(), err)
	}
	return c, nil
}

func growBuf(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n)
	}
	return b[:n]
}

// hashingReader hashes and counts what is read through it. Its reads tell a
// clean end of the stream (errShort) from a failing one (the reader's error),
// so that the retry layer retries only the latter.
type hashingReader struct {
	r   io.Reader
	h   *blake3.Hasher
	n   int64
	buf []byte
}

func (r *hashingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	_, _ = r.h.Write(p[:n])
	r.n += int64(n)
	return n, err
}

// full fills p.
func (r *hashingReader) full(p []byte) error {
	for len(p) > 0 {
		n, err := r.Read(p)
		p = p[n:]
		if err == io.EOF {
			if len(p) > 0 {
				return errShort
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// skip reads and discards n bytes.
func (r *hashingReader) skip(n int64) error {
	if r.buf == nil {
		r.buf = make([]byte, 32<<10)
	}
	for n > 0 {
		m := int(min(n, int64(len(r.buf))))
		if err := r.full(r.buf[:m]); err != nil {
			return err
		}
		n -= int64(m)
	}
	return nil
}

// rest reads to the end and returns the last limit bytes at most.
func (r *hashingReader) rest(limit int) ([]byte, error) {
	if r.buf == nil {
		r.buf = make([]byte, 32<<10)
	}
	var tail []byte
	for {
		n, err := r.Read(r.buf)
		tail = append(tail, r.buf[:n]...)
		if len(tail) > 2*limit {
			tail = append(tail[:0], tail[len(tail)-limit:]...)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	if len(tail) > limit {
		tail = tail[len(tail)-limit:]
	}
	return tail, nil
}
