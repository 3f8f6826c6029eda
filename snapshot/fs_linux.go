package snapshot

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Everything here works relative to open directory descriptors, so paths of
// any depth (beyond PATH_MAX) can be backed up and restored, and a restore
// never follows a symlink it did not mean to.

// procPath names an entry of an open directory by a short path, for the
// calls that have no *at form (xattrs on symlinks).
func procPath(dirfd int, name string) string {
	return "/proc/self/fd/" + strconv.Itoa(dirfd) + "/" + name
}

// noatime is cleared once the kernel refuses O_NOATIME (not the file's owner).
var noatime = struct {
	sync.Mutex
	off bool
}{}

// openAt opens name below dirfd without following a final symlink and,
// where allowed, without touching its atime (reading must not change what
// the next backup sees).
func openAt(dirfd int, name string, flags int) (int, error) {
	flags |= unix.O_NOFOLLOW | unix.O_CLOEXEC
	noatime.Lock()
	off := noatime.off
	noatime.Unlock()
	if !off {
		fd, err := unix.Openat(dirfd, name, flags|unix.O_NOATIME, 0)
		if err != unix.EPERM {
			return fd, err
		}
	}
	return unix.Openat(dirfd, name, flags, 0)
}

func lstatAt(dirfd int, name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	return st, err
}

// direntBufs holds getdents buffers: a walk reads thousands of directories.
var direntBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// readDirNames lists the open directory fd ("." and ".." left out) straight
// from getdents, without the dup, fcntl and close an *os.File would cost.
func readDirNames(fd int) ([]string, error) {
	bp := direntBufs.Get().(*[]byte)
	defer direntBufs.Put(bp)
	var names []string
	for {
		n, err := unix.Getdents(fd, *bp)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("getdents: %w", err)
		}
		if n <= 0 {
			return names, nil
		}
		_, _, names = unix.ParseDirent((*bp)[:n], -1, names)
	}
}

func readlinkAt(dirfd int, name string) ([]byte, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return nil, err
		}
		if n < size {
			return buf[:n], nil
		}
	}
}

func ts(t unix.Timespec) time.Time { return time.Unix(t.Sec, t.Nsec).UTC() }

var names = struct {
	sync.Mutex
	users, groups map[uint32]string
}{users: map[uint32]string{}, groups: map[uint32]string{}}

func lookupNames(uid, gid uint32) (string, string) {
	names.Lock()
	defer names.Unlock()
	u, ok := names.users[uid]
	if !ok {
		if x, err := user.LookupId(strconv.Itoa(int(uid))); err == nil {
			u = x.Username
		}
		names.users[uid] = u
	}
	g, ok := names.groups[gid]
	if !ok {
		if x, err := user.LookupGroupId(strconv.Itoa(int(gid))); err == nil {
			g = x.Name
		}
		names.groups[gid] = g
	}
	return u, g
}

// nodeFromStat fills what lstat tells; content, link target and xattrs are
// the caller's.
func nodeFromStat(name []byte, st *unix.Stat_t) *Node {
	n := &Node{
		Name: Name(name), Mode: st.Mode & 0o7777, UID: st.Uid, GID: st.Gid,
		ModTime: ts(st.Mtim), ATime: ts(st.Atim), CTime: ts(st.Ctim),
		Inode: st.Ino, DeviceID: st.Dev, Links: st.Nlink,
	}
	n.User, n.Group = lookupNames(st.Uid, st.Gid)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		n.Type = TypeFile
		n.Size = uint64(st.Size)
		n.Sparse = st.Size > 0 && st.Blocks*512 < st.Size
	case unix.S_IFDIR:
		n.Type = TypeDir
	case unix.S_IFLNK:
		n.Type = TypeSymlink
		n.Size = uint64(st.Size)
	case unix.S_IFBLK:
		n.Type, n.Rdev = TypeDev, st.Rdev
	case unix.S_IFCHR:
		n.Type, n.Rdev = TypeCharDev, st.Rdev
	case unix.S_IFIFO:
		n.Type = TypeFIFO
	case unix.S_IFSOCK:
		n.Type = TypeSocket
	}
	return n
}

// readXattrs lists name's extended attributes. A filesystem without xattr
// support has none.
func readXattrs(dirfd int, name string) ([]Xattr, error) {
	p := procPath(dirfd, name)
	return listXattrs(func(b []byte) (int, error) { return unix.Llistxattr(p, b) },
		func(k string, b []byte) (int, error) { return unix.Lgetxattr(p, k, b) })
}

// readXattrsFd is readXattrs for an open file or directory: no path walk.
func readXattrsFd(fd int) ([]Xattr, error) {
	return listXattrs(func(b []byte) (int, error) { return unix.Flistxattr(fd, b) },
		func(k string, b []byte) (int, error) { return unix.Fgetxattr(fd, k, b) })
}

func listXattrs(list func([]byte) (int, error), get func(string, []byte) (int, error)) ([]Xattr, error) {
	size, err := list(nil)
	if err != nil || size == 0 {
		if err == unix.ENOTSUP || err == unix.EOPNOTSUPP {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("list xattrs: %w", err)
		}
		return nil, nil
	}
	buf := make([]byte, size)
	size, err = list(buf)
	if err != nil {
		return nil, fmt.Errorf("list xattrs: %w", err)
	}
	var out []Xattr
	for _, key := range splitNul(buf[:size]) {
		vsize, err := get(key, nil)
		if err != nil {
			if err == unix.ENODATA {
				continue // removed meanwhile
			}
			return nil, fmt.Errorf("get xattr %q: %w", key, err)
		}
		val := make([]byte, vsize)
		if vsize > 0 {
			if vsize, err = get(key, val); err != nil {
				return nil, fmt.Errorf("get xattr %q: %w", key, err)
			}
		}
		out = append(out, Xattr{Name: Name(key), Value: val[:vsize]})
	}
	return out, nil
}

// fdFile reads an open file. os.File would cost a system call per file to
// set up (the descriptor's flags), which adds up over many small files.
type fdFile int

func (f fdFile) Read(b []byte) (int, error) {
	for {
		n, err := unix.Read(int(f), b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n == 0 && len(b) > 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}

func (f fdFile) Close() error { return unix.Close(int(f)) }

func splitNul(b []byte) []string {
	var out []string
	start := 0
	for i, c := range b {
		if c == 0 {
			if i > start {
				out = append(out, string(b[start:i]))
			}
			start = i + 1
		}
	}
	return out
}

var isRoot = os.Geteuid() == 0

var euid, egid = uint32(os.Geteuid()), uint32(os.Getegid())

// applyMeta sets owner (when root), mode, xattrs and times of name in dirfd,
// in the order that keeps each one: chown clears setuid bits, so chmod
// follows it; times come last because every other change moves ctime/mtime.
func applyMeta(dirfd int, name string, n *Node) error {
	var errs []error
	p := procPath(dirfd, name)
	if isRoot {
		if err := unix.Fchownat(dirfd, name, int(n.UID), int(n.GID), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			errs = append(errs, fmt.Errorf("chown: %w", err))
		}
	}
	if n.Type != TypeSymlink {
		if err := chmodNoFollow(dirfd, name, n.Mode&0o7777); err != nil {
			errs = append(errs, fmt.Errorf("chmod: %w", err))
		}
	}
	for _, x := range n.Xattrs {
		if err := unix.Lsetxattr(p, string(x.Name), x.Value, 0); err != nil {
			errs = append(errs, fmt.Errorf("set xattr %q: %w", x.Name, err))
		}
	}
	times := []unix.Timespec{timespec(n.ATime), timespec(n.ModTime)}
	if err := unix.UtimesNanoAt(dirfd, name, times, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		errs = append(errs, fmt.Errorf("set times: %w", err))
	}
	return errors.Join(errs...)
}

// chmodNoFollow sets the mode of name in dirfd, never through a symlink
// (something may have replaced the entry since it was made). Kernels
// without fchmodat2 get a check that the entry is no symlink instead.
func chmodNoFollow(dirfd int, name string, mode uint32) error {
	err := unix.Fchmodat(dirfd, name, mode, unix.AT_SYMLINK_NOFOLLOW)
	if err != unix.EOPNOTSUPP && err != unix.ENOSYS {
		return err
	}
	st, serr := lstatAt(dirfd, name)
	if serr != nil {
		return serr
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return err // a symlink's mode cannot be set
	}
	return unix.Fchmodat(dirfd, name, mode, 0)
}

// created says what a file new from this restore already has of its
// node's metadata: chown and chmod calls that change nothing took 3% of
// the CPU of a restore of 65k small files.
type created struct{ owner, mode bool }

// applyMetaFd is applyMeta for an entry open as fd: whatever happens to its
// name meanwhile, the metadata lands on the file that was written.
func applyMetaFd(fd int, n *Node, has created) error {
	var errs []error
	if isRoot && !has.owner {
		if err := unix.Fchown(fd, int(n.UID), int(n.GID)); err != nil {
			errs = append(errs, fmt.Errorf("chown: %w", err))
		}
	}
	if !has.mode {
		if err := unix.Fchmod(fd, n.Mode&0o7777); err != nil {
			errs = append(errs, fmt.Errorf("chmod: %w", err))
		}
	}
	for _, x := range n.Xattrs {
		if err := unix.Fsetxattr(fd, string(x.Name), x.Value, 0); err != nil {
			errs = append(errs, fmt.Errorf("set xattr %q: %w", x.Name, err))
		}
	}
	if err := futimens(fd, [2]unix.Timespec{timespec(n.ATime), timespec(n.ModTime)}); err != nil {
		errs = append(errs, fmt.Errorf("set times: %w", err))
	}
	return errors.Join(errs...)
}

// hasDefaultACL reports whether the directory open as fd may give new
// files a default ACL, which takes the umask's place in setting their mode.
func hasDefaultACL(fd int) bool {
	_, err := unix.Fgetxattr(fd, "system.posix_acl_default", nil)
	return err != unix.ENODATA && err != unix.EOPNOTSUPP
}

// processUmask returns the umask the kernel applies to the modes of new
// files, or -1 when /proc does not say (before Linux 4.7).
func processUmask() int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "Umask:"); ok {
			m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32)
			if err != nil {
				return -1
			}
			return int(m)
		}
	}
	return -1
}

func timespec(t time.Time) unix.Timespec {
	if t.IsZero() {
		return unix.Timespec{Nsec: unix.UTIME_OMIT}
	}
	// Seconds and nanoseconds apart: UnixNano overflows outside 1678–2262.
	return unix.Timespec{Sec: t.Unix(), Nsec: int64(t.Nanosecond())}
}

// futimens sets the times of the file open as fd: utimensat with a NULL
// path acts on the descriptor itself, which x/sys/unix has no wrapper for.
func futimens(fd int, ts [2]unix.Timespec) error {
	_, _, errno := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}
