package snapshot

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/repo"
)

// fullTree has a node of every type with every field set.
func fullTree() *Tree {
	at := time.Date(2026, 3, 29, 1, 30, 0, 5, time.FixedZone("", 3600))
	var a, b repo.ID
	a[0], b[31] = 0xab, 0xcd
	nodes := []*Node{
		{Name: Name("bin"), Type: TypeDir, Mode: 0o755, Subtree: &a, ModTime: at, ATime: at, CTime: at, Links: 2},
		{Name: Name("data.db"), Type: TypeFile, Mode: 0o600, UID: 999, GID: 999, User: "postgres", Group: "postgres",
			Size: 1 << 40, ModTime: at.Add(time.Second), ATime: at, CTime: at, Inode: 1<<64 - 1, DeviceID: 2049,
			Links: 1, Content: []repo.ID{a, b, a}, Sparse: true,
			Xattrs: []Xattr{{Name: Name("user.a"), Value: []byte{0, 1, 2, 0xff}}, {Name: Name("security.selinux"), Value: []byte("system_u:object_r:etc_t:s0\x00")}}},
		{Name: Name("empty"), Type: TypeFile, Mode: 0o644, ModTime: at, ATime: at, CTime: at},
		{Name: Name("lib"), Type: TypeSymlink, Mode: 0o777, Size: 7, Link: Name("usr/lib"), ModTime: at, ATime: at, CTime: at},
		{Name: Name("null"), Type: TypeCharDev, Mode: 0o666, Rdev: 259, ModTime: at, ATime: at, CTime: at},
		{Name: Name("pipe"), Type: TypeFIFO, Mode: 0o644},
		{Name: Name("sda"), Type: TypeDev, Mode: 0o660, Rdev: 2048},
		{Name: Name("sock"), Type: TypeSocket, Mode: 0o755, User: "root", Group: "root"},
		{Name: Name("ünïcödé ✓"), Type: TypeFile, Mode: 0o644, User: "root", Group: "root", Content: []repo.ID{b}, Size: 1},
	}
	return &Tree{Nodes: nodes}
}

// decodeBoth decodes b with the fast path and with encoding/json.
func decodeBoth(t *testing.T, b []byte) (fast Tree, ok bool, slow Tree, err error) {
	t.Helper()
	fast, ok = decodeTreeFast(b)
	err = json.Unmarshal(b, &slow)
	return fast, ok, slow, err
}

func TestDecodeTreeFastReadsEncodedTrees(t *testing.T) {
	for name, tree := range map[string]*Tree{"full": fullTree(), "empty": {}, "no nodes": {Nodes: []*Node{}}} {
		b, err := tree.Encode()
		if err != nil {
			t.Fatal(err)
		}
		fast, ok, slow, err := decodeBoth(t, b)
		if err != nil || !ok {
			t.Fatalf("%s: fast path ok=%v, encoding/json error %v, for %s", name, ok, err, b)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Errorf("%s: fast path gave %+v, encoding/json %+v", name, fast, slow)
		}
		if !fast.Equal(tree) {
			t.Errorf("%s: decoded tree differs from the encoded one", name)
		}
	}
}

// Anything outside what Tree.Encode writes goes to encoding/json, and
// DecodeTree's result is the same either way.
func TestDecodeTreeFastDeclines(t *testing.T) {
	enc := func(tr *Tree) string {
		b, err := tr.Encode()
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	quoted := enc(&Tree{Nodes: []*Node{{Name: Name(`a"b<c`), Type: TypeFile}}})
	raw := enc(&Tree{Nodes: []*Node{{Name: Name("caf\xe9"), Type: TypeFile}}})
	cases := map[string]string{
		"escaped name":      quoted,
		"name in base64":    raw,
		"unknown key":       `{"nodes":[{"name":"a","type":"file","future":[1,{"x":null}]}]}`,
		"key in other case": `{"nodes":[{"Name":"a","type":"file"}]}`,
		"repeated key":      `{"nodes":[{"name":"a","name":"b","type":"file"}]}`,
		"null field":        `{"nodes":[{"name":"a","type":"file","subtree":null}]}`,
		"other top key":     `{"nodes":[],"x":1}`,
	}
	for name, in := range cases {
		fast, ok, slow, err := decodeBoth(t, []byte(in))
		if ok {
			t.Errorf("%s: the fast path read %s as %+v", name, in, fast)
		}
		got, derr := DecodeTree([]byte(in))
		if (err != nil) != (derr != nil) || err == nil && !reflect.DeepEqual(*got, slow) {
			t.Errorf("%s: DecodeTree gave %+v, %v; encoding/json %+v, %v", name, got, derr, slow, err)
		}
	}
	// White space is JSON's, and read.
	pretty := `{ "nodes" : [ { "name" : "a" , "type" : "file" , "size" : 3 } ] }` + "\n"
	if fast, ok, slow, err := decodeBoth(t, []byte(pretty)); !ok || err != nil || !reflect.DeepEqual(fast, slow) {
		t.Errorf("spaced: ok=%v err=%v fast %+v slow %+v", ok, err, fast, slow)
	}
}

// The fast path never accepts what encoding/json rejects, and never reads a
// value differently.
func FuzzDecodeTreeFast(f *testing.F) {
	b, err := fullTree().Encode()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(`{"nodes":null}`))
	f.Add([]byte(strings.Replace(string(b), `"mode":`, `"mode" :`, 1)))
	// Each a valid tree but for one flaw, and rejected by encoding/json.
	for _, flaw := range []string{
		`"mode":4294967296`, `"size":18446744073709551616`, `"mode":-1`, `"size":1.5`,
		`"uid":1e3`, `"gid":01`, `"sparse":tru`, `"mtime":"2026-13-01T00:00:00Z"`,
		`"content":["zz"]`, `"subtree":"` + strings.Repeat("g", 64) + `"`,
		`"xattrs":[{"name":"x","value":"!!"}]`, `"type":"file",`,
	} {
		f.Add([]byte(`{"nodes":[{"name":"a",` + flaw + `}]}`))
	}
	f.Add([]byte(`{"nodes":[{"name":"a"}]} x`))
	f.Fuzz(func(t *testing.T, in []byte) {
		fast, ok := decodeTreeFast(in)
		if !ok {
			return
		}
		var slow Tree
		if err := json.Unmarshal(in, &slow); err != nil {
			t.Fatalf("fast path accepted %q, which encoding/json rejects: %v", in, err)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%q: fast path gave %+v, encoding/json %+v", in, fast, slow)
		}
	})
}

func TestEncodeTreeFastWritesWhatEncodingJSONWrites(t *testing.T) {
	for name, tree := range map[string]*Tree{"full": fullTree(), "empty": {}, "no nodes": {Nodes: []*Node{}}, "null node": {Nodes: []*Node{nil}}} {
		fast, ok := encodeTreeFast(tree)
		want, err := json.Marshal(tree)
		if err != nil || !ok {
			t.Fatalf("%s: fast path ok=%v, encoding/json error %v", name, ok, err)
		}
		if string(fast) != string(want) {
			t.Errorf("%s: fast path wrote\n%s\nencoding/json\n%s", name, fast, want)
		}
	}
	for _, n := range []*Node{{Name: Name("a<b")}, {Name: Name("a&b")}, {Name: Name("caf\xe9")}, {Name: Name("x"), User: "tab\t"}, {Name: Name("line\u2028sep")},
		{Name: Name("y"), ModTime: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}} {
		if b, ok := encodeTreeFast(&Tree{Nodes: []*Node{n}}); ok {
			t.Errorf("%+v: the fast path wrote %s", n, b)
		}
		got, err := (&Tree{Nodes: []*Node{n}}).Encode()
		want, werr := json.Marshal(&Tree{Nodes: []*Node{n}})
		if string(got) != string(want) || (err != nil) != (werr != nil) {
			t.Errorf("%+v: Encode gave %s, %v; encoding/json %s, %v", n, got, err, want, werr)
		}
	}
}

// Whatever the fast path writes, encoding/json writes byte for byte.
func FuzzEncodeTreeFast(f *testing.F) {
	f.Add("libc.so.6", "root", "usr/lib", "user.x", []byte{0, 1}, uint64(0o644), uint64(1<<40), int64(1_700_000_000), int64(123), 3600, true)
	f.Add("", "", "", "", []byte(nil), uint64(0), uint64(0), int64(0), int64(0), 0, false)
	f.Add("ünï", "é", "l", "x", []byte{}, uint64(1<<32-1), uint64(1<<64-1), int64(-62135596800), int64(999999999), -45*60, false)
	// Each plain but for one string that encoding/json escapes.
	for _, s := range []string{"a&b", "a<b", "a>b", `a"b`, `a\b`, "a\nb", "a\u2029b", "a\u2028b", "caf\xe9", "a\x7fb"} {
		f.Add(s, "u", "l", "x", []byte{1}, uint64(0o640), uint64(9), int64(1_700_000_000), int64(5), 0, false)
	}
	f.Fuzz(func(t *testing.T, name, user, link, xname string, value []byte, mode, size uint64, sec, nsec int64, offset int, sparse bool) {
		at := time.Unix(sec, nsec).In(time.FixedZone("", offset%(24*3600)))
		var id repo.ID
		id[3] = byte(size)
		n := &Node{Name: Name(name), Type: user, Mode: uint32(mode), UID: uint32(mode >> 32), User: user, Group: link,
			Size: size, ModTime: at, ATime: at.Add(time.Duration(nsec)), Inode: size >> 3, DeviceID: mode, Links: size & 7,
			Rdev: mode & 1, Link: Name(link), Content: []repo.ID{id}, Xattrs: []Xattr{{Name: Name(xname), Value: value}}, Sparse: sparse}
		if mode&2 != 0 {
			n.Subtree, n.Content, n.Xattrs = &id, nil, nil
		}
		tree := &Tree{Nodes: []*Node{n, {Name: Name(user)}}}
		fast, ok := encodeTreeFast(tree)
		if !ok {
			return
		}
		want, err := json.Marshal(tree)
		if err != nil {
			t.Fatalf("fast path wrote %s for a tree encoding/json rejects: %v", fast, err)
		}
		if string(fast) != string(want) {
			t.Fatalf("fast path wrote\n%s\nencoding/json\n%s", fast, want)
		}
	})
}
