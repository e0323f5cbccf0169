package cbt

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/sendense/capture/internal/extent"
	"github.com/vmware/govmomi/vim25/types"
)

// pager is a fake QueryChangedDiskAreas: answers[i] is the answer to the
// i-th call, whose start offset must be starts[i].
type pager struct {
	t       *testing.T
	answers []types.DiskChangeInfo
	calls   int
}

func (p *pager) query(_ context.Context, start uint64) (types.DiskChangeInfo, error) {
	if p.calls >= len(p.answers) {
		p.t.Fatalf("call %d at %d: no more answers", p.calls, start)
	}
	a := p.answers[p.calls]
	p.calls++
	if uint64(a.StartOffset) != start {
		p.t.Fatalf("call %d at %d, want %d", p.calls, start, a.StartOffset)
	}
	return a, nil
}

func win(start, length int64, areas ...int64) types.DiskChangeInfo {
	info := types.DiskChangeInfo{StartOffset: start, Length: length}
	for i := 0; i+1 < len(areas); i += 2 {
		info.ChangedArea = append(info.ChangedArea, types.DiskChangeExtent{Start: areas[i], Length: areas[i+1]})
	}
	return info
}

func TestCollectAreas(t *testing.T) {
	for _, tc := range []struct {
		name     string
		capacity uint64
		answers  []types.DiskChangeInfo
		want     extent.List
	}{
		{"one call", 100, []types.DiskChangeInfo{win(0, 100, 10, 5)}, extent.List{{Offset: 10, Length: 5}}},
		{"nothing changed", 100, []types.DiskChangeInfo{win(0, 100)}, nil},
		{"empty window is not the end", 300, []types.DiskChangeInfo{
			win(0, 100, 0, 10), win(100, 100), win(200, 100, 250, 10)}, extent.List{{Offset: 0, Length: 10}, {Offset: 250, Length: 10}}},
		{"paged: window ends at the last area", 100, []types.DiskChangeInfo{
			win(0, 30, 0, 10, 20, 10), win(30, 70, 40, 10)}, extent.List{{Offset: 0, Length: 10}, {Offset: 20, Length: 10}, {Offset: 40, Length: 10}}},
		{"adjacent and overlapping areas merge", 100, []types.DiskChangeInfo{
			win(0, 20, 0, 10, 10, 10), win(20, 80, 15, 20, 30, 5, 60, 10, 55, 10)}, extent.List{{Offset: 0, Length: 35}, {Offset: 55, Length: 15}}},
		{"areas past the end are clipped", 100, []types.DiskChangeInfo{win(0, 100, 90, 64, 200, 10)}, extent.List{{Offset: 90, Length: 10}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &pager{t: t, answers: tc.answers}
			a, err := collectAreas(context.Background(), tc.capacity, p.query)
			if err != nil {
				t.Fatal(err)
			}
			if len(a.List) == 0 && len(tc.want) == 0 {
				a.List = nil
			}
			if !reflect.DeepEqual(a.List, tc.want) || a.Calls != len(tc.answers) || a.Capacity != tc.capacity {
				t.Fatalf("collectAreas = %v (%d calls, capacity %d), want %v (%d calls)", a.List, a.Calls, a.Capacity, tc.want, len(tc.answers))
			}
		})
	}
}

func TestCollectAreasErrors(t *testing.T) {
	p := &pager{t: t, answers: []types.DiskChangeInfo{win(0, 50), win(50, 0)}}
	if _, err := collectAreas(context.Background(), 100, p.query); err == nil || !strings.Contains(err.Error(), "no progress") {
		t.Fatalf("zero-length window: %v", err)
	}
	p = &pager{t: t, answers: []types.DiskChangeInfo{win(0, 100, -5, 10)}}
	if _, err := collectAreas(context.Background(), 100, p.query); err == nil {
		t.Fatal("negative area accepted")
	}
	boom := errors.New("boom")
	_, err := collectAreas(context.Background(), 100, func(context.Context, uint64) (types.DiskChangeInfo, error) {
		return types.DiskChangeInfo{}, boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("query error lost: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := collectAreas(ctx, 100, p.query); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}
}

func TestServerURL(t *testing.T) {
	for _, tc := range []struct {
		server string
		port   int
		want   string
		bad    bool
	}{
		{"vc.example.com", 0, "https://vc.example.com:443/sdk", false},
		{"vc.example.com:8443", 0, "https://vc.example.com:8443/sdk", false},
		{"vc.example.com", 9443, "https://vc.example.com:9443/sdk", false},
		{"https://user:pw@10.0.0.1:444/sdk", 0, "https://10.0.0.1:444/sdk", false},
		{"https://[::1]/", 0, "https://[::1]:443/sdk", false},
		{"http://vc", 0, "", true},
		{"", 0, "", true},
	} {
		u, err := serverURL(Config{Server: tc.server, Port: tc.port})
		if (err != nil) != tc.bad || (err == nil && u.String() != tc.want) {
			t.Errorf("serverURL(%q, %d) = %v, %v; want %s", tc.server, tc.port, u, err, tc.want)
		}
	}
}

func TestParseThumbprint(t *testing.T) {
	good := "6F:A4:93:3B:7B:2C:29:AF:50:51:E5:96:2A:4C:29:42:D9:13:53:F3"
	for _, s := range []string{good, strings.ToLower(good), strings.ReplaceAll(good, ":", "")} {
		if b, err := parseThumbprint(s); err != nil || colonHex(b) != good {
			t.Errorf("parseThumbprint(%q) = %x, %v", s, b, err)
		}
	}
	for _, s := range []string{"", "6F:A4", "zz" + good[2:]} {
		if _, err := parseThumbprint(s); err == nil {
			t.Errorf("parseThumbprint(%q) accepted", s)
		}
	}
}
