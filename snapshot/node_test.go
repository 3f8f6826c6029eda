package snapshot_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
)

func TestNameJSON(t *testing.T) {
	cases := []struct {
		name string
		json string
	}{
		{"file.txt", `"file.txt"`},
		{"ünïcödé ✓", `"ünïcödé ✓"`},
		{"quote\"and\\slash", `"quote\"and\\slash"`},
		{"", `""`},
		{"\xff\xfe", `{"b64":"//4="}`},
		{"latin1 caf\xe9", `{"b64":"` + base64.StdEncoding.EncodeToString([]byte("latin1 caf\xe9")) + `"}`},
		{"a\x00b", `"a\u0000b"`},
	}
	for _, tc := range cases {
		b, err := json.Marshal(snapshot.Name(tc.name))
		if err != nil {
			t.Fatalf("%q: %v", tc.name, err)
		}
		if string(b) != tc.json {
			t.Errorf("%q encodes as %s, want %s", tc.name, b, tc.json)
		}
		var back snapshot.Name
		if err := json.Unmarshal(b, &back); err != nil || string(back) != tc.name {
			t.Errorf("%q: round trip gave %q, %v", tc.name, back, err)
		}
	}
	for _, bad := range []string{`123`, `{}`, `{"b64":"!!"}`, `[]`, `null`, `{"b64":5}`, `true`, `"unterminated`} {
		var n snapshot.Name
		if err := json.Unmarshal([]byte(bad), &n); err == nil {
			t.Errorf("name %s accepted as %q", bad, n)
		}
	}
}

func b64(s string) string {
	return `{"b64":"` + base64.StdEncoding.EncodeToString([]byte(s)) + `"}`
}

func TestDecodeTreeRejectsNames(t *testing.T) {
	bad := []string{
		`""`, `"."`, `".."`, `"a/b"`, `"/"`, `"/etc"`, `"a/"`, `"../x"`, `"a\u0000b"`, `"\u0000"`,
		b64(""), b64("."), b64(".."), b64("a/b"), b64("x\x00"), b64("\xff/\xff"),
	}
	for _, name := range bad {
		tree := `{"nodes":[{"name":` + name + `,"type":"file"}]}`
		if got, err := snapshot.DecodeTree([]byte(tree)); err == nil {
			t.Errorf("name %s accepted: %q", name, got.Nodes[0].Name)
		}
		// Also when it hides behind a valid entry.
		tree = `{"nodes":[{"name":"ok","type":"file"},{"name":` + name + `,"type":"file"}]}`
		if _, err := snapshot.DecodeTree([]byte(tree)); err == nil {
			t.Errorf("second name %s accepted", name)
		}
	}
	if _, err := snapshot.DecodeTree([]byte(`{"nodes":[{"type":"file"}]}`)); err == nil {
		t.Error("node without a name accepted")
	}
}

func TestDecodeTreeAcceptsNames(t *testing.T) {
	for _, name := range []string{`"..."`, `".a"`, `"a."`, `"-"`, `" "`, `"a\\b"`, `"ünï"`, b64("\xff"), b64("..\xff"), `"` + strings.Repeat("x", 255) + `"`} {
		tree := `{"nodes":[{"name":` + name + `,"type":"file"}]}`
		if _, err := snapshot.DecodeTree([]byte(tree)); err != nil {
			t.Errorf("name %s rejected: %v", name, err)
		}
	}
}

func TestDecodeTreeRejects(t *testing.T) {
	sub := `"` + strings.Repeat("ab", 32) + `"`
	cases := map[string]string{
		"not json":               `nodes`,
		"truncated":              `{"nodes":[{"name":"a"`,
		"null node":              `{"nodes":[null]}`,
		"dir without subtree":    `{"nodes":[{"name":"d","type":"dir"}]}`,
		"bad subtree id":         `{"nodes":[{"name":"d","type":"dir","subtree":"abc"}]}`,
		"bad content id":         `{"nodes":[{"name":"f","type":"file","content":["zz"]}]}`,
		"nodes not a list":       `{"nodes":{}}`,
		"bad time":               `{"nodes":[{"name":"f","type":"file","mtime":"yesterday"}]}`,
		"bad link":               `{"nodes":[{"name":"l","type":"symlink","link":5}]}`,
		"bad xattr value":        `{"nodes":[{"name":"f","type":"file","xattrs":[{"name":"user.a","value":"!!"}]}]}`,
		"negative size":          `{"nodes":[{"name":"f","type":"file","size":-1}]}`,
		"second dir, no subtree": `{"nodes":[{"name":"d","type":"dir","subtree":` + sub + `},{"name":"e","type":"dir"}]}`,
		// A restore would replace what it had just made: a symlink, then a
		// directory of the same name to write through it.
		"duplicate name": `{"nodes":[{"name":"l","type":"symlink","link":"/etc"},{"name":"l","type":"dir","subtree":` + sub + `}]}`,
		"out of order":   `{"nodes":[{"name":"b","type":"file"},{"name":"a","type":"file"}]}`,
	}
	for name, tree := range cases {
		if _, err := snapshot.DecodeTree([]byte(tree)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	for _, ok := range []string{`{"nodes":[]}`, `{"nodes":null}`, `{}`} {
		if tree, err := snapshot.DecodeTree([]byte(ok)); err != nil || len(tree.Nodes) != 0 {
			t.Errorf("%s: %v", ok, err)
		}
	}
}

func fullTree() *snapshot.Tree {
	sub := repo.ID{1, 2, 3}
	mt := time.Date(2026, 11, 22, 18, 0, 0, 123456789, time.UTC)
	return &snapshot.Tree{Nodes: []*snapshot.Node{
		{Name: snapshot.Name("dir"), Type: snapshot.TypeDir, Mode: 0o755, UID: 1000, GID: 1000, User: "alice", Group: "staff",
			ModTime: mt, ATime: mt, CTime: mt, Inode: 42, DeviceID: 7, Links: 2, Subtree: &sub},
		{Name: snapshot.Name("file"), Type: snapshot.TypeFile, Mode: 0o4755, Size: 3 << 20,
			ModTime: time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), ATime: time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
			CTime: mt, Content: []repo.ID{{4}, {5}, {4}}, Sparse: true,
			Xattrs: []snapshot.Xattr{{Name: snapshot.Name("user.note"), Value: []byte{0, 1, 0xff}}, {Name: snapshot.Name("user.\xff"), Value: nil}}},
		{Name: snapshot.Name("link\xff"), Type: snapshot.TypeSymlink, Mode: 0o777, Link: snapshot.Name("../target/\xfe"), ModTime: mt, ATime: mt, CTime: mt},
		{Name: snapshot.Name("null"), Type: snapshot.TypeCharDev, Mode: 0o666, Rdev: 0x103, ModTime: mt, ATime: mt, CTime: mt},
		{Name: snapshot.Name("pipe"), Type: snapshot.TypeFIFO, Mode: 0o600, ModTime: mt, ATime: mt, CTime: mt},
	}}
}

func TestTreeRoundTrip(t *testing.T) {
	tree := fullTree()
	enc, err := tree.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := snapshot.DecodeTree(enc)
	if err != nil {
		t.Fatalf("decode: %v\n%s", err, enc)
	}
	again, err := got.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, enc) {
		t.Fatalf("round trip changed the tree:\n%s\n%s", enc, again)
	}
	for i, n := range got.Nodes {
		w := tree.Nodes[i]
		if !bytes.Equal(n.Name, w.Name) || !bytes.Equal(n.Link, w.Link) || n.Type != w.Type || n.Mode != w.Mode ||
			!n.ModTime.Equal(w.ModTime) || !n.ATime.Equal(w.ATime) || n.Size != w.Size || n.Rdev != w.Rdev ||
			len(n.Content) != len(w.Content) || len(n.Xattrs) != len(w.Xattrs) || n.Sparse != w.Sparse {
			t.Errorf("node %d: %+v, want %+v", i, n, w)
		}
	}
	if *got.Nodes[0].Subtree != *tree.Nodes[0].Subtree || !bytes.Equal(got.Nodes[1].Xattrs[0].Value, []byte{0, 1, 0xff}) {
		t.Error("subtree or xattr value lost")
	}
}

// TestTreeJSONNames pins the field names of docs/format.md.
func TestTreeJSONNames(t *testing.T) {
	enc, err := fullTree().Encode()
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		Nodes []map[string]json.RawMessage `json:"nodes"`
	}
	if err := json.Unmarshal(enc, &raw); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, n := range raw.Nodes {
		for k := range n {
			seen[k] = true
		}
	}
	documented := []string{"name", "type", "mode", "uid", "gid", "user", "group", "size", "mtime", "atime", "ctime",
		"inode", "device_id", "links", "rdev", "link", "content", "subtree", "xattrs", "sparse"}
	for _, k := range documented {
		if !seen[k] {
			t.Errorf("field %q never written", k)
		}
		delete(seen, k)
	}
	for k := range seen {
		t.Errorf("undocumented field %q", k)
	}
	if !bytes.Contains(enc, []byte(`"mtime":"2026-11-22T18:00:00.123456789Z"`)) {
		t.Errorf("times are not RFC 3339 with nanoseconds:\n%s", enc)
	}
	if !bytes.Contains(enc, []byte(`"value":"AAH/"`)) {
		t.Errorf("xattr values are not base64:\n%s", enc)
	}
}

func TestTreeSortFind(t *testing.T) {
	names := []string{"b", "a", "\xff", "B", "a.txt", "", "ab", "A"}
	tree := &snapshot.Tree{}
	for _, n := range names {
		tree.Nodes = append(tree.Nodes, &snapshot.Node{Name: snapshot.Name(n)})
	}
	tree.Sort()
	for i := 1; i < len(tree.Nodes); i++ {
		if bytes.Compare(tree.Nodes[i-1].Name, tree.Nodes[i].Name) >= 0 {
			t.Fatalf("not sorted by bytes: %q before %q", tree.Nodes[i-1].Name, tree.Nodes[i].Name)
		}
	}
	for _, n := range names {
		if got := tree.Find([]byte(n)); got == nil || string(got.Name) != n {
			t.Errorf("Find(%q) = %v", n, got)
		}
	}
	for _, n := range []string{"c", "a.tx", "aa", "\xfe"} {
		if got := tree.Find([]byte(n)); got != nil {
			t.Errorf("Find(%q) found %q", n, got.Name)
		}
	}
	if (&snapshot.Tree{}).Find([]byte("a")) != nil {
		t.Error("Find in an empty tree")
	}
}

func TestValidName(t *testing.T) {
	for _, n := range []string{"", ".", "..", "a/b", "/", "\x00", "x\x00"} {
		if snapshot.ValidName([]byte(n)) == nil {
			t.Errorf("ValidName(%q) accepted", n)
		}
	}
	for _, n := range []string{"a", "...", ".x", "\xff", "a b"} {
		if err := snapshot.ValidName([]byte(n)); err != nil {
			t.Errorf("ValidName(%q): %v", n, err)
		}
	}
}

func FuzzDecodeTree(f *testing.F) {
	enc, err := fullTree().Encode()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(enc)
	for n := 0; n < len(enc); n += 23 {
		f.Add(enc[:n])
	}
	for _, name := range []string{`""`, `"."`, `".."`, `"a/b"`, `"a\u0000"`, b64(".."), b64("/"), `{"b64":"QR=="}`, `null`} {
		f.Add([]byte(`{"nodes":[{"name":` + name + `,"type":"file"}]}`))
	}
	f.Add([]byte(`{"nodes":[{"name":"d","type":"dir"}]}`))
	f.Add([]byte(`{"nodes":[null]}`))
	f.Add([]byte(`{"nodes":[{"NAME":"..","name":"x","type":"file"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		tree, err := snapshot.DecodeTree(b)
		if err != nil {
			return
		}
		for _, n := range tree.Nodes {
			if err := snapshot.ValidName(n.Name); err != nil {
				t.Fatalf("accepted %v", err)
			}
			if n.Type == snapshot.TypeDir && n.Subtree == nil {
				t.Fatalf("accepted directory %q without a subtree", n.Name)
			}
		}
		enc, err := tree.Encode()
		if err != nil {
			t.Fatalf("accepted tree does not encode: %v", err)
		}
		back, err := snapshot.DecodeTree(enc)
		if err != nil {
			t.Fatalf("encoded tree rejected: %v\n%s", err, enc)
		}
		again, err := back.Encode()
		if err != nil || !bytes.Equal(again, enc) {
			t.Fatalf("round trip changed the tree:\n%s\n%s", enc, again)
		}
		for i := range tree.Nodes {
			if !bytes.Equal(tree.Nodes[i].Name, back.Nodes[i].Name) || !bytes.Equal(tree.Nodes[i].Link, back.Nodes[i].Link) {
				t.Fatalf("node %d renamed: %q -> %q", i, tree.Nodes[i].Name, back.Nodes[i].Name)
			}
		}
	})
}

// TestNodeEqualSeesEveryField: changing any field of a node makes it differ,
// so an unchanged-directory shortcut can never keep stale metadata. A field
// added to Node without a case in Equal fails here.
func TestNodeEqualSeesEveryField(t *testing.T) {
	id := repo.ID{1}
	base := func() *snapshot.Node {
		sub := repo.ID{2}
		return &snapshot.Node{
			Name: snapshot.Name("n"), Type: snapshot.TypeFile, Mode: 0o644, UID: 1, GID: 2,
			User: "u", Group: "g", Size: 3, ModTime: time.Unix(4, 5), ATime: time.Unix(6, 7),
			CTime: time.Unix(8, 9), Inode: 10, DeviceID: 11, Links: 12, Rdev: 13,
			Link: snapshot.Name("l"), Content: []repo.ID{id}, Subtree: &sub,
			Xattrs: []snapshot.Xattr{{Name: snapshot.Name("user.a"), Value: []byte("v")}}, Sparse: false,
		}
	}
	if !base().Equal(base()) {
		t.Fatal("equal nodes differ")
	}
	// The same instant in another zone is the same time.
	z := base()
	z.ModTime = z.ModTime.In(time.FixedZone("x", 3600))
	if !z.Equal(base()) {
		t.Fatal("the same mtime in another zone differs")
	}
	typ := reflect.TypeOf(snapshot.Node{})
	for i := range typ.NumField() {
		f := typ.Field(i)
		n := base()
		v := reflect.ValueOf(n).Elem().Field(i)
		switch v.Kind() {
		case reflect.String:
			v.SetString(v.String() + "x")
		case reflect.Uint32, reflect.Uint64:
			v.SetUint(v.Uint() + 1)
		case reflect.Bool:
			v.SetBool(!v.Bool())
		case reflect.Slice:
			switch f.Name {
			case "Content":
				n.Content = []repo.ID{{9}}
			case "Xattrs":
				n.Xattrs[0].Value = []byte("w")
			default:
				v.SetBytes(append(v.Bytes(), 'x'))
			}
		case reflect.Pointer:
			n.Subtree = &id
		case reflect.Struct: // time.Time
			v.Set(reflect.ValueOf(v.Interface().(time.Time).Add(time.Nanosecond)))
		default:
			t.Fatalf("field %s of kind %s: teach this test to change it", f.Name, v.Kind())
		}
		if n.Equal(base()) || base().Equal(n) {
			t.Errorf("a change of %s is not seen by Equal", f.Name)
		}
	}
}
