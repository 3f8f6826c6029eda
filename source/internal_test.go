package source

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"testing/iotest"

	"google.golang.org/protobuf/encoding/protowire"
)

func TestParsePgDSN(t *testing.T) {
	for _, tc := range []struct {
		dsn, conn, password string
	}{
		{"postgres://backup:s%40cret:x@db.example:6432/pach?sslmode=disable",
			"user='backup' host='db.example' port='6432' dbname='pach' sslmode='disable'", "s@cret:x"},
		{"postgresql://u@h1:5432,[::1]:5433/app", "user='u' host='h1,::1' port='5432,5433' dbname='app'", ""},
		{"postgres:///app?host=%2Fvar%2Frun%2Fpostgresql&password=pw", "dbname='app' host='/var/run/postgresql'", "pw"},
		{`host=db user=backup password='a b\'c\\' dbname = 'my db'`, `host='db' user='backup' dbname='my db'`, `a b'c\`},
		{`host=db password=x\ y`, `host='db'`, `x y`},
	} {
		c, err := parsePgDSN(tc.dsn)
		if err != nil {
			t.Errorf("%q: %v", tc.dsn, err)
			continue
		}
		if got := c.connString(); got != tc.conn {
			t.Errorf("%q: connection string %q, want %q", tc.dsn, got, tc.conn)
		}
		if c.password != tc.password {
			t.Errorf("%q: password %q, want %q", tc.dsn, c.password, tc.password)
		}
		if tc.password != "" && strings.Contains(strings.Join(c.args(), " "), tc.password) {
			t.Errorf("%q: password in the arguments %q", tc.dsn, c.args())
		}
	}
	// '' is no escape in libpq: the value ends, and "'s'" is no key.
	for _, bad := range []string{"host=db s3cret", "host=db password='s3cret", "=s3cret", "password='s3cret''s'"} {
		_, err := parsePgDSN(bad)
		if err == nil {
			t.Errorf("%q: no error", bad)
		} else if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%q: error %q shows the secret", bad, err)
		}
	}
}

func TestParseMySQLDSN(t *testing.T) {
	for _, tc := range []struct {
		dsn  string
		want mysqlConn
	}{
		{"backup:secret@tcp(db:3306)/dbacl_iris", mysqlConn{user: "backup", password: "secret", net: "tcp", addr: "db:3306", db: "dbacl_iris"}},
		{"u:p@ss:w/rd@tcp([::1]:3307)/shop?tls=skip-verify&charset=utf8mb4", mysqlConn{user: "u", password: "p@ss:w/rd", net: "tcp", addr: "[::1]:3307", db: "shop", tls: "skip-verify"}},
		{"root@unix(/run/mysqld/mysqld.sock)/app", mysqlConn{user: "root", net: "unix", addr: "/run/mysqld/mysqld.sock", db: "app"}},
		{"/app", mysqlConn{net: "tcp", addr: "127.0.0.1:3306", db: "app"}},
	} {
		c, err := parseMySQLDSN(tc.dsn)
		if err != nil {
			t.Errorf("%q: %v", tc.dsn, err)
			continue
		}
		if *c != tc.want {
			t.Errorf("%q: got %+v, want %+v", tc.dsn, *c, tc.want)
		}
		args, err := c.args()
		if err != nil {
			t.Errorf("%q: %v", tc.dsn, err)
		}
		if args[0] != "--no-defaults" {
			t.Errorf("%q: --no-defaults is not first in %q", tc.dsn, args)
		}
		if c.password != "" && strings.Contains(strings.Join(args, " "), c.password) {
			t.Errorf("%q: password in the arguments %q", tc.dsn, args)
		}
	}
	for _, bad := range []string{"user:pw@tcp(db:3306)", "user:pw@tcp(db:3306/x", "user:pw@udp(x)/db"} {
		if _, err := parseMySQLDSN(bad); err == nil {
			t.Errorf("%q: no error", bad)
		} else if strings.Contains(err.Error(), "pw") {
			t.Errorf("%q: error %q shows the password", bad, err)
		}
	}
}

func TestErrLogKeepsTheEndWithoutSecrets(t *testing.T) {
	l := newErrLog(func(s string) bool { return strings.Contains(s, "ERROR") })
	for i := range 10000 {
		fmt.Fprintf(l, "warning %d: %s\n", i, strings.Repeat("w", 50))
	}
	fmt.Fprintf(l, "ERROR: first\n%s\n", strings.Repeat("x", 100000))
	io.WriteString(l, "ERROR: password hunter2 rejected\nfatal: giv")
	io.WriteString(l, "ing up")

	sum := l.summary([]string{"hunter2"})
	want := "ERROR: password [redacted] rejected; fatal: giving up"
	if !strings.HasSuffix(sum, want) {
		t.Errorf("summary %q does not end with %q", sum, want)
	}
	if len(sum) > maxKeep*(maxLine+2) {
		t.Errorf("summary is %d bytes long", len(sum))
	}
	n, first := l.matches([]string{"hunter2"})
	if n != 2 || first != "ERROR: first; ERROR: password [redacted] rejected" {
		t.Errorf("matches: %d, %q", n, first)
	}
}

func TestCopyCounter(t *testing.T) {
	dump := "\\restrict abc\nSET x = 1;\n" +
		"COPY public.items (id, name) FROM stdin;\n1\tone\n2\ttwo\\nlines\n3\t" + strings.Repeat("z", 100000) + "\n\\.\n" +
		"COPY public.\"Mixed Case\" (k) FROM stdin;\n\\.\n" +
		"COPY billing.invoices (id) FROM stdin;\n7\n\\.x\n\\.\n" +
		"SELECT 1;\n"
	for _, chunk := range []int{1, 2, 7, 4096, len(dump)} {
		var c copyCounter
		r := iotest.OneByteReader(strings.NewReader(dump))
		if chunk > 1 {
			r = io.LimitReader(strings.NewReader(dump), int64(len(dump)))
		}
		buf := make([]byte, chunk)
		if _, err := io.CopyBuffer(struct{ io.Writer }{&c}, struct{ io.Reader }{r}, buf); err != nil {
			t.Fatal(err)
		}
		got := fmt.Sprint(c.tables, c.rows, c.unsure)
		want := `[public.items public."Mixed Case" billing.invoices] [3 0 2] false`
		if got != want {
			t.Errorf("chunk %d: got %s, want %s", chunk, got, want)
		}
	}
}

// grpcStream returns data followed by its SHA-256 as etcd sends a
// snapshot: SnapshotResponse messages of at most msg bytes of it each,
// with the header and remaining_bytes fields around the blob, the trailer
// in a message of its own.
func grpcStream(data []byte, msg int) []byte {
	var out []byte
	for len(data) > 0 {
		n := min(msg, len(data))
		var m []byte
		m = protowire.AppendTag(m, 1, protowire.BytesType)
		m = protowire.AppendBytes(m, []byte{0x08, 0x01}) // header{cluster_id: 1}
		m = protowire.AppendTag(m, 2, protowire.VarintType)
		m = protowire.AppendVarint(m, uint64(len(data)-n))
		m = protowire.AppendTag(m, 3, protowire.BytesType)
		m = protowire.AppendBytes(m, data[:n])
		m = protowire.AppendTag(m, 4, protowire.BytesType)
		m = protowire.AppendString(m, "3.6.0")
		out = append(out, 0)
		out = binary.BigEndian.AppendUint32(out, uint32(len(m)))
		out = append(out, m...)
		data = data[n:]
	}
	return out
}

func TestEtcdStreamChecksTheTrailer(t *testing.T) {
	data := make([]byte, 100000)
	rand.Read(data)
	sum := sha256.Sum256(data)
	read := func(stream []byte, chunk int) ([]byte, error) {
		s := &etcdStream{body: io.NopCloser(bytes.NewReader(stream)), h: sha256.New()}
		var out bytes.Buffer
		buf := make([]byte, chunk)
		_, err := io.CopyBuffer(&out, struct{ io.Reader }{s}, buf)
		if err != nil {
			return nil, err
		}
		return out.Bytes(), s.Close()
	}
	whole := append(bytes.Clone(data), sum[:]...)
	good := append(grpcStream(data, 32<<10), grpcStream(sum[:], 32)...)
	for _, chunk := range []int{1, 31, 32, 33, 4096, 64 << 10} {
		got, err := read(good, chunk)
		if err != nil || !bytes.Equal(got, whole) {
			t.Errorf("chunk %d: %d bytes, %v", chunk, len(got), err)
		}
	}
	// The trailer split over messages is found all the same.
	if _, err := read(grpcStream(whole, 1000), 4096); err != nil {
		t.Errorf("trailer across messages: %v", err)
	}
	damaged := bytes.Clone(data)
	damaged[5000] ^= 1
	if _, err := read(append(grpcStream(damaged, 32<<10), grpcStream(sum[:], 32)...), 4096); err == nil || !strings.Contains(err.Error(), "SHA-256") {
		t.Errorf("damaged snapshot: %v", err)
	}
	if _, err := read(grpcStream(data[:50000], 32<<10), 4096); err == nil {
		t.Error("snapshot without its trailer: no error")
	}
	if _, err := read(good[:len(good)-10], 4096); err == nil || !strings.Contains(err.Error(), "cut") {
		t.Errorf("stream cut inside a message: %v", err)
	}
	// Cut between two messages, the reply lacks its gRPC status.
	body := &grpcBody{resp: &http.Response{Body: io.NopCloser(bytes.NewReader(grpcStream(data, 32<<10))), Trailer: http.Header{}}}
	if _, err := io.ReadAll(&etcdStream{body: body, h: sha256.New()}); err == nil || !strings.Contains(err.Error(), "without a gRPC status") {
		t.Errorf("stream cut between messages: %v", err)
	}
}

func TestGRPCBodyReportsTheStatus(t *testing.T) {
	read := func(trailer http.Header) error {
		b := &grpcBody{resp: &http.Response{Body: io.NopCloser(strings.NewReader("x")), Trailer: trailer}}
		_, err := io.ReadAll(b)
		return err
	}
	if err := read(http.Header{"Grpc-Status": {"0"}}); err != nil {
		t.Errorf("status 0: %v", err)
	}
	err := read(http.Header{"Grpc-Status": {"14"}, "Grpc-Message": {"etcdserver%3A leader changed"}})
	if err == nil || !strings.Contains(err.Error(), "14: etcdserver: leader changed") {
		t.Errorf("status 14: %v", err)
	}
	if err := read(http.Header{}); err != errNoStatus {
		t.Errorf("a stream that ends without a status: %v", err)
	}
}

// fakeRedis answers a replication handshake with reply after SYNC, and
// returns its address.
func fakeRedis(t *testing.T, reply []byte) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		buf := make([]byte, 4096)
		var got []byte
		for !bytes.Contains(got, []byte("SYNC\r\n")) {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			got = append(got, buf[:n]...)
			// One reply per command: REPLCONF capa, REPLCONF rdb-only.
			for range bytes.Count(buf[:n], []byte("REPLCONF")) {
				conn.Write([]byte("+OK\r\n"))
			}
		}
		// Small writes, so the reader sees the mark split across reads.
		for len(reply) > 0 {
			n := min(len(reply), 1000)
			if _, err := conn.Write(reply[:n]); err != nil {
				return
			}
			reply = reply[n:]
		}
	}()
	return l.Addr().String()
}

func TestRedisTransferForms(t *testing.T) {
	rdb := make([]byte, 300000)
	rand.Read(rdb)
	copy(rdb, "REDIS0010")
	mark := strings.Repeat("0123456789", 4)
	withMark := append(append([]byte("\n\n$EOF:"+mark+"\r\n"), rdb...), mark...)
	counted := append([]byte(fmt.Sprintf("\n\n\n$%d\r\n", len(rdb))), rdb...)
	for _, tc := range []struct {
		name  string
		reply []byte
		ok    bool
	}{
		{"end mark", withMark, true},
		{"length", counted, true},
		// A server that ignores rdb-only goes on with the command stream.
		{"length, then commands", append(counted, "*1\r\n$4\r\nPING\r\n"...), true},
		{"end mark cut short", withMark[:len(withMark)-50], false},
		{"length cut short", counted[:len(counted)-1], false},
		{"error", []byte("-NOPERM this user has no permissions\r\n"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := fakeRedis(t, tc.reply)
			_, rc, err := openRedis(t.Context(), Spec{Kind: "redis", Address: addr})
			var got []byte
			if err == nil {
				got, err = io.ReadAll(rc)
				if cerr := rc.Close(); err == nil {
					err = cerr
				}
			}
			if tc.ok {
				if err != nil || !bytes.Equal(got, rdb) {
					t.Errorf("got %d bytes, %v; want the %d bytes of the RDB", len(got), err, len(rdb))
				}
				return
			}
			if err == nil {
				t.Errorf("no error; got %d bytes", len(got))
			}
		})
	}
}

func TestEtcdURL(t *testing.T) {
	for _, tc := range []struct {
		ep     string
		tls    bool
		want   string
		errMsg string
	}{
		{"10.0.0.1:2379", false, "http://10.0.0.1:2379", ""},
		{"10.0.0.1:2379", true, "https://10.0.0.1:2379", ""},
		{"https://etcd-0.example:2379/", false, "https://etcd-0.example:2379", ""},
		{"http://127.0.0.1:2379", true, "http://127.0.0.1:2379", ""},
		{"unix://localhost:2379", false, "", "only http://, https:// and host:port"},
	} {
		got, err := etcdURL(tc.ep, tc.tls)
		if got != tc.want || (err == nil) != (tc.errMsg == "") || (err != nil && !strings.Contains(err.Error(), tc.errMsg)) {
			t.Errorf("etcdURL(%q, %v) = %q, %v; want %q, error with %q", tc.ep, tc.tls, got, err, tc.want, tc.errMsg)
		}
	}
}
