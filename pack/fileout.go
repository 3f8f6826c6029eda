package pack

import (
	"errors"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A pack going into a local repository is written once and not read again
// by the backup. Copying it into page-cache pages costs more CPU than any
// stage but compression (fresh pages, then the kernel's writeback), so it
// goes past the cache (O_DIRECT) in whole aligned blocks; only the short tail
// goes through the cache. A file system that refuses O_DIRECT gets ordinary
// writes.
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

// fileOut buffers the writes into a pack file.
type fileOut struct {
	f      *os.File
	buf    *[]byte // from outBufs; nil once flushed
	n      int     // bytes in buf
	direct bool    // O_DIRECT is set on f
}

func newFileOut(f *os.File, direct bool) *fileOut {
	o := &fileOut{f: f, buf: outBufs.Get().(*[]byte)}
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

func (o *fileOut) write(b []byte) error {
	for len(b) > 0 {
		c := copy((*o.buf)[o.n:], b)
		o.n += c
		b = b[c:]
		if o.n == outSize {
			if err := o.writeOut(); err != nil {
				return err
			}
		}
	}
	return nil
}

// writeOut writes the buffer's bytes: a whole block while direct, so every
// direct write starts at an aligned offset.
func (o *fileOut) writeOut() error {
	_, err := o.f.Write((*o.buf)[:o.n])
	if err != nil && o.direct && errors.Is(err, unix.EINVAL) {
		// The file system took the flag but not the write: write through
		// the cache from here on (nothing was written by the failed call).
		if err = o.setDirect(false); err == nil {
			o.direct = false
			_, err = o.f.Write((*o.buf)[:o.n])
		}
	}
	o.n = 0
	return err
}

// flush writes what is buffered (the tail: through the cache, as its length
// is not aligned) and gives the buffer back.
func (o *fileOut) flush() error {
	var err error
	if o.direct {
		if err = o.setDirect(false); err == nil {
			o.direct = false
		}
	}
	if err == nil && o.n > 0 {
		err = o.writeOut()
	}
	o.release()
	return err
}

// release gives the buffer back; the fileOut is used up.
func (o *fileOut) release() {
	if o.buf != nil {
		outBufs.Put(o.buf)
		o.buf = nil
	}
}
