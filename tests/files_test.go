package tests

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sendense/capture/internal/lab"
)

// TestFiles: a disk with a GPT partition table and an ext4 file system
// holding known files (mkfs.ext4 -d) is put in a lab VM and backed up;
// files ls lists it and files get extracts a directory byte-identical,
// through libguestfs.
func TestFiles(t *testing.T) {
	b := startBackupLab(t, []lab.VMSpec{{Name: "fs", PowerOn: true, Disks: []lab.DiskSpec{{Capacity: 32 * mib}}}})
	src := filepath.Join(b.dir, "fsroot")
	os.MkdirAll(filepath.Join(src, "dir", "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "hello.txt"), []byte("hello world\n"), 0o644)
	blob := bytes.Repeat([]byte("sendense files\x00\x01\x02"), 20000)
	os.WriteFile(filepath.Join(src, "dir", "sub", "blob.bin"), blob, 0o600)
	os.Symlink("../hello.txt", filepath.Join(src, "dir", "link"))
	part, img := filepath.Join(b.dir, "part.img"), filepath.Join(b.dir, "disk.img")
	run(t, "truncate", "-s", "30M", part)
	run(t, "mkfs.ext4", "-q", "-F", "-d", src, part)
	run(t, "truncate", "-s", "32M", img)
	cmd := b.cmd(nil)
	cmd.Path, cmd.Args = "/sbin/sfdisk", []string{"sfdisk", "-q", img}
	cmd.Stdin = strings.NewReader("label: gpt\nstart=2048, size=61440, type=L\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v: %s", err, out)
	}
	run(t, "dd", "if="+part, "of="+img, "bs=1M", "seek=1", "conv=notrunc,sparse", "status=none")
	raw, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(raw); off += 64 << 10 {
		if chunk := raw[off : off+64<<10]; !bytes.Equal(chunk, make([]byte, len(chunk))) {
			if err := b.Write("fs", 2000, uint64(off), chunk); err != nil {
				t.Fatal(err)
			}
		}
	}
	b.backup("fs")

	out := b.mustRun("files", "--json", "fs", "ls", "/")
	got := map[string]fileLine{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var f fileLine
		if err := json.Unmarshal([]byte(l), &f); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		got[f.Name] = f
	}
	if got["hello.txt"].Type != "file" || got["hello.txt"].Size != 12 || got["dir"].Type != "dir" {
		t.Fatalf("files ls /:\n%s", out)
	}

	to := filepath.Join(b.dir, "out")
	b.mustRun("files", "fs", "get", "/dir", "--to", to)
	run(t, "cmp", filepath.Join(src, "dir", "sub", "blob.bin"), filepath.Join(to, "dir", "sub", "blob.bin"))
	if l, err := os.Readlink(filepath.Join(to, "dir", "link")); err != nil || l != "../hello.txt" {
		t.Errorf("the symbolic link: %q %v", l, err)
	}
	if _, errOut, code := b.run(nil, "files", "fs", "get", "/dir", "--to", to); code != 1 || !strings.Contains(errOut, "exists") {
		t.Errorf("get over an existing directory: exit %d: %s", code, errOut)
	}
}

type fileLine struct {
	Name string `json:"name"`
	Type string `json:"type"`
	Size uint64 `json:"size"`
}
