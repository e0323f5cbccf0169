// Package cbt is the vSphere side of Sendense capture: it connects to a
// vCenter or ESXi server with a verified certificate, finds virtual machines
// and their disks, manages Changed Block Tracking (CBT) and snapshots, and
// asks vSphere which areas of a snapshot disk changed since a changeId.
//
// # Connecting
//
// Connect logs in with a user name and password and refuses a server whose
// certificate it cannot verify: pin its SHA-1 thumbprint (Config.Thumbprint,
// what VDDK checks too), give a CA file (Config.CAFile), or, only when the
// caller explicitly asks, skip verification (Config.Insecure). The session is
// kept alive and, when vSphere answers NotAuthenticated (an expired or
// terminated session), the client logs in again once and repeats the call.
//
// # Changed areas
//
// ChangedAreas follows the rules in docs/design.md ("Changed Block Tracking rules"): it calls
// QueryChangedDiskAreas again and again from StartOffset+Length until the
// whole disk is covered (a window without areas is not the end, and vSphere
// pages its answers), then merges the areas. A changeId is "UUID/sequence";
// ParseChangeID, Compare and NeedFull decide when the next backup of a disk
// has to be full and say why.
//
// Everything here works the same against the lab (internal/lab), a vCenter
// simulator with a CBT tracker, which the tests use.
package cbt
