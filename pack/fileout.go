package pack

import (
	"errors"
	"os"
	"sync"
	"unsafe"

	"github.com/cairn-backup/cairn/crypto"
	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"
)

// A pack going into a local repository is written once and not read again
// by the backup. Copying it into page-cache pages costs more CPU than any
// stage but compression (fresh pages, then the kernel's writeback), so it
// goes past the cache (O_DIRECT) in whole aligned blocks; only the short tail
// goes through the cache. A file system that refuses O_DIRECT gets ordinary
// writes.
//
// Blobs are added under the pack store's lock, so a full block is hashed
// and written on a goroutine of its own while the next one fills: a write
// that waits for the disk holds up no other worker.
const (
	dioAlign = 4096    // offsets, lengths and memory: a block on any device
	outSize  = 1 << 20 // bytes per write
)

var outBufs = sync.Pool{New: func() any {
	b := make([]byte, outSize+dioAlign)
	off := dioAlign - int(uintptr(unsafe.Pointer(&b[0]))%dioAlign)
	b = b[off%dioAlign:][:outSize:outSize]
	return &b
}}

// fileOut buffers the writes into a pack file and hashes what it writes.
type fileOut struct {
	f      *os.File
	hash   *blake3.Hasher
	buf    *[]byte // from outBufs; nil once flushed
	n      int     // bytes in buf
	direct bool    // O_DIRECT is set on f; changed only by the block in flight
	// done receives the result of the block in flight; nil when none is.
	done chan error
}

func newFileOut(f *os.File, direct bool) *fileOut {
	o := &fileOut{f: f, hash: crypto.NewHasher(), buf: outBufs.Get().(*[]byte)}
	if direct {
		o.direct = o.setDirect(true) == nil
	}
	return o
}

func (o *fileOut) setDirect(on bool) error {
	fd := int(o.f.Fd())
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return err
	}
	if on {
		fl |= unix.O_DIRECT
	} else {
		fl &^= unix.O_DIRECT
	}
	_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl)
	return err
}

// write buffers b; a full buffer goes out in the background.
func (o *fileOut) write(b []byte) error {
	for len(b) > 0 {
		c := copy((*o.buf)[o.n:], b)
		o.n += c
		b = b[c:]
		if o.n == outSize {
			if err := o.wait(); err != nil {
				return err
			}
			buf, done := o.buf, make(chan error, 1)
			o.buf, o.n, o.done = outBufs.Get().(*[]byte), 0, done
			go func() {
				err := o.writeOut(*buf)
				outBufs.Put(buf)
				done <- err
			}()
		}
	}
	return nil
}

// wait waits for the block in flight, if any, and returns its error.
func (o *fileOut) wait() error {
	if o.done == nil {
		return nil
	}
	err := <-o.done
	o.done = nil
	return err
}

// writeOut hashes and writes b: a whole block while direct, so every direct
// write starts at an aligned offset.
func (o *fileOut) writeOut(b []byte) error {
	_, _ = o.hash.Write(b)
	_, err := o.f.Write(b)
	if err != nil && o.direct && errors.Is(err, unix.EINVAL) {
		// The file system took the flag but not the write: write through
		// the cache from here on (nothing was written by the failed call).
		if err = o.setDirect(false); err == nil {
			o.direct = false
			_, err = o.f.Write(b)
		}
	}
	return err
}

// flush writes what is buffered (the tail: through the cache, as its length
// is not aligned), gives the buffer back and returns the hash of all that
// was written.
func (o *fileOut) flush() (id [32]byte, err error) {
	err = o.wait()
	if err == nil && o.direct {
		if err = o.setDirect(false); err == nil {
			o.direct = false
		}
	}
	if err == nil && o.n > 0 {
		err = o.writeOut((*o.buf)[:o.n])
	}
	o.release()
	o.hash.Sum(id[:0])
	return id, err
}

// release waits for the block in flight and gives the buffer back; the
// fileOut is used up.
func (o *fileOut) release() {
	_ = o.wait()
	if o.buf != nil {
		outBufs.Put(o.buf)
		o.buf = nil
	}
}
