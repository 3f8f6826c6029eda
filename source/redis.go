package source

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	// redisIdle bounds a wait without a byte from the server. While it
	// prepares the RDB a server sends a newline every second.
	redisIdle = 2 * time.Minute
	// redisMarkLen is the length of the end mark of a diskless transfer.
	redisMarkLen = 40
)

// openRedis takes an RDB over the replication protocol, the way
// redis-cli --rdb does: the server forks and sends a point-in-time image,
// to disk on its side or, when it syncs disklessly, straight to us.
func openRedis(ctx context.Context, s Spec) (string, io.ReadCloser, error) {
	if s.Address == "" {
		return "", nil, errors.New("redis: no address")
	}
	d := net.Dialer{Timeout: 30 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", s.Address)
	if err != nil {
		return "", nil, fmt.Errorf("redis %s: %w", s.Address, err)
	}
	// Cancelling ctx closes the connection, which ends any read.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	rs := &rdbStream{conn: conn, stop: stop, r: bufio.NewReaderSize(conn, 64<<10), addr: s.Address}
	if err := rs.handshake(s.Password); err != nil {
		rs.closeConn()
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return "", nil, fmt.Errorf("redis %s: %w", s.Address, err)
	}
	return "dump.rdb", rs, nil
}

// rdbStream is the RDB part of a SYNC reply.
type rdbStream struct {
	conn net.Conn
	stop func() bool
	r    *bufio.Reader
	addr string

	// Either the RDB's length is known, or it ends with mark.
	remaining int64
	mark      []byte
	pend      []byte // received, not yet returned; the last bytes may be the mark

	done   bool // all of the RDB has been returned
	err    error
	closed bool
}

func (s *rdbStream) handshake(password string) error {
	if password != "" {
		if _, err := s.command("AUTH", password); err != nil {
			return fmt.Errorf("AUTH: %w", err)
		}
	}
	// capa eof lets a server that syncs disklessly stream the RDB
	// without writing it to its disk first; rdb-only (Redis 7) asks for
	// the RDB alone, not the commands that follow. Older servers refuse
	// rdb-only, and then the stream is cut after the RDB.
	if _, err := s.command("REPLCONF", "capa", "eof"); err != nil && !isReplyError(err) {
		return err
	}
	if _, err := s.command("REPLCONF", "rdb-only", "1"); err != nil && !isReplyError(err) {
		return err
	}
	if err := s.write("SYNC"); err != nil {
		return err
	}
	// The payload header: $<length> or $EOF:<mark>, after any newlines
	// the server sends to keep the connection alive while it forks.
	var line string
	for {
		s.deadline()
		l, err := s.r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("SYNC: %w", err)
		}
		if line = strings.TrimRight(l, "\r\n"); line != "" {
			break
		}
	}
	switch {
	case strings.HasPrefix(line, "-"):
		return fmt.Errorf("SYNC: %s", line[1:])
	case strings.HasPrefix(line, "$EOF:"):
		mark := line[len("$EOF:"):]
		if len(mark) != redisMarkLen {
			return fmt.Errorf("SYNC: bad end mark in %q", line)
		}
		s.mark = []byte(mark)
		s.pend = make([]byte, 0, 64<<10)
	case strings.HasPrefix(line, "$"):
		n, err := strconv.ParseInt(line[1:], 10, 64)
		if err != nil || n < 0 {
			return fmt.Errorf("SYNC: bad payload header %q", line)
		}
		s.remaining = n
	default:
		return fmt.Errorf("SYNC: unexpected reply %q", line)
	}
	return nil
}

// replyError is an error reply from the server.
type replyError string

func (e replyError) Error() string { return string(e) }

func isReplyError(err error) bool {
	var re replyError
	return errors.As(err, &re)
}

// command sends one command and reads a status or error reply.
func (s *rdbStream) command(args ...string) (string, error) {
	if err := s.write(args...); err != nil {
		return "", err
	}
	s.deadline()
	line, err := s.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	switch {
	case strings.HasPrefix(line, "+"):
		return line[1:], nil
	case strings.HasPrefix(line, "-"):
		return "", replyError(line[1:])
	default:
		return "", fmt.Errorf("unexpected reply %q", line)
	}
}

// write sends a command as a RESP array of bulk strings.
func (s *rdbStream) write(args ...string) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	_ = s.conn.SetWriteDeadline(time.Now().Add(redisIdle))
	_, err := s.conn.Write(b.Bytes())
	return err
}

func (s *rdbStream) deadline() { _ = s.conn.SetReadDeadline(time.Now().Add(redisIdle)) }

func (s *rdbStream) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var err error
	if s.mark == nil {
		n, err = s.readCounted(p)
	} else {
		n, err = s.readMarked(p)
	}
	if err != nil && err != io.EOF {
		err = fmt.Errorf("redis %s: RDB transfer: %w", s.addr, err)
		s.err = err
	}
	return n, err
}

func (s *rdbStream) readCounted(p []byte) (int, error) {
	if s.remaining == 0 {
		s.done = true
		return 0, io.EOF
	}
	if int64(len(p)) > s.remaining {
		p = p[:s.remaining]
	}
	s.deadline()
	n, err := s.r.Read(p)
	s.remaining -= int64(n)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if err == nil && s.remaining == 0 {
		s.done = true
	}
	return n, err
}

// readMarked returns the bytes before the end mark. The last bytes
// received are held back until more arrive, because they may be the mark.
func (s *rdbStream) readMarked(p []byte) (int, error) {
	for {
		keep := len(s.mark)
		if s.done {
			keep = 0
		}
		if avail := len(s.pend) - keep; avail > 0 {
			n := copy(p, s.pend[:avail])
			s.pend = s.pend[:copy(s.pend, s.pend[n:])]
			return n, nil
		}
		if s.done {
			return 0, io.EOF
		}
		s.deadline()
		n, err := s.r.Read(s.pend[len(s.pend):cap(s.pend)])
		s.pend = s.pend[:len(s.pend)+n]
		if bytes.HasSuffix(s.pend, s.mark) {
			s.pend = s.pend[:len(s.pend)-len(s.mark)]
			s.done = true
			continue
		}
		if err == io.EOF {
			return 0, io.ErrUnexpectedEOF
		}
		if err != nil {
			return 0, err
		}
	}
}

func (s *rdbStream) closeConn() {
	s.stop()
	s.conn.Close()
}

func (s *rdbStream) Close() error {
	if s.closed {
		return s.err
	}
	s.closed = true
	s.closeConn()
	if s.err == nil && !s.done {
		s.err = fmt.Errorf("redis %s: RDB stream closed before its end", s.addr)
	}
	return s.err
}

// restoreRedis writes the RDB as DataDir/dump.rdb for a stopped server.
// The server loads it at start only with appendonly off; with the
// append-only file on, Redis ignores dump.rdb and starts empty.
func restoreRedis(ctx context.Context, t Target, r io.Reader) error {
	if t.DataDir == "" {
		return errors.New("no redis directory to restore into")
	}
	if t.Address != "" {
		d := net.Dialer{Timeout: 2 * time.Second}
		if conn, err := d.DialContext(ctx, "tcp", t.Address); err == nil {
			conn.Close()
			return fmt.Errorf("a server answers at %s: stop it first; a running Redis does not read dump.rdb and overwrites it when it saves", t.Address)
		}
	}
	br := bufio.NewReader(r)
	if head, _ := br.Peek(5); string(head) != "REDIS" {
		return errors.New("the stream is not an RDB file")
	}
	if err := os.MkdirAll(t.DataDir, 0o750); err != nil {
		return err
	}
	dst := filepath.Join(t.DataDir, "dump.rdb")
	if _, err := os.Lstat(dst); err == nil && !t.Overwrite {
		return fmt.Errorf("%s exists; allow overwriting to replace it", dst)
	}
	tmp, err := writeTemp(t.DataDir, ".dump.rdb-", br)
	if err != nil {
		return err
	}
	// Under root, the file goes to the directory's owner, the user the
	// server runs as, or it could not read its 0600 file.
	if os.Geteuid() == 0 {
		if fi, err := os.Stat(t.DataDir); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				err = os.Chown(tmp, int(st.Uid), int(st.Gid))
			}
			if err != nil {
				os.Remove(tmp)
				return err
			}
		}
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
