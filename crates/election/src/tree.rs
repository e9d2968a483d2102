//! The administration group tree.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{ElectionError, Result};
use crate::ids::GroupId;

/// One edge of a group tree given as data: a group and its parent (`None` for a root).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupEdge {
    /// The group.
    pub group: GroupId,
    /// Its parent, or `None` for a root group.
    pub parent: Option<GroupId>,
}

/// Administration groups as a forest (normally a single tree under one root).
///
/// Built from data with [`GroupTree::from_edges`], which rejects unknown parents, duplicate
/// groups and cycles. Groups are stored densely and kept in parent-first order (see
/// [`GroupTree::edges`]), which lets per-group answers be computed in one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupTree {
    index: BTreeMap<GroupId, usize>,
    ids: Vec<GroupId>,
    parent: Vec<Option<usize>>,
    depth: Vec<u32>,
    order: Vec<usize>,
}

impl GroupTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a tree from `(group, parent)` edges in any order.
    ///
    /// # Errors
    /// [`ElectionError::DuplicateGroup`] if a group appears twice,
    /// [`ElectionError::UnknownGroup`] if a parent is not itself listed,
    /// [`ElectionError::GroupCycle`] if following parents from a group leads back to it.
    pub fn from_edges(edges: impl IntoIterator<Item = GroupEdge>) -> Result<Self> {
        let edges: Vec<GroupEdge> = edges.into_iter().collect();
        let mut index = BTreeMap::new();
        let mut ids = Vec::with_capacity(edges.len());
        for (i, e) in edges.iter().enumerate() {
            if index.insert(e.group, i).is_some() {
                return Err(ElectionError::DuplicateGroup { group: e.group });
            }
            ids.push(e.group);
        }
        let mut parent = Vec::with_capacity(edges.len());
        for e in &edges {
            parent.push(match e.parent {
                None => None,
                Some(p) => Some(
                    *index
                        .get(&p)
                        .ok_or(ElectionError::UnknownGroup { group: p })?,
                ),
            });
        }
        let mut tree = Self {
            index,
            ids,
            parent,
            depth: Vec::new(),
            order: Vec::new(),
        };
        tree.rebuild_order()?;
        Ok(tree)
    }

    /// Computes depths and the parent-first order; fails on a cycle.
    fn rebuild_order(&mut self) -> Result<()> {
        const UNSEEN: u32 = u32::MAX;
        const ON_PATH: u32 = u32::MAX - 1;
        let n = self.ids.len();
        let mut depth = vec![UNSEEN; n];
        let mut path = Vec::new();
        for start in 0..n {
            let mut cur = start;
            // Walk up until a node of known depth, a root, or a node already on this path.
            let base = loop {
                match depth[cur] {
                    UNSEEN => {
                        depth[cur] = ON_PATH;
                        path.push(cur);
                        match self.parent[cur] {
                            Some(p) => cur = p,
                            None => break None,
                        }
                    }
                    ON_PATH => {
                        return Err(ElectionError::GroupCycle {
                            group: self.ids[cur],
                        });
                    }
                    d => break Some(d),
                }
            };
            // `path` holds nodes from `start` upwards; assign depths from the top down.
            let mut d = base.map_or(0, |d| d + 1);
            while let Some(node) = path.pop() {
                depth[node] = d;
                d += 1;
            }
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| (depth[i], i));
        self.depth = depth;
        self.order = order;
        Ok(())
    }

    /// Adds a group under `parent` (or as a root).
    ///
    /// # Errors
    /// [`ElectionError::DuplicateGroup`] or [`ElectionError::UnknownGroup`] for the parent.
    pub fn add_group(&mut self, group: GroupId, parent: Option<GroupId>) -> Result<()> {
        if self.index.contains_key(&group) {
            return Err(ElectionError::DuplicateGroup { group });
        }
        let p = match parent {
            None => None,
            Some(p) => Some(self.idx(p)?),
        };
        let i = self.ids.len();
        self.index.insert(group, i);
        self.ids.push(group);
        self.parent.push(p);
        let d = p.map_or(0, |p| self.depth[p] + 1);
        self.depth.push(d);
        self.order.push(i);
        self.order.sort_by_key(|&i| (self.depth[i], i));
        Ok(())
    }

    /// Moves `group` (with its subtree) under `new_parent`.
    ///
    /// # Errors
    /// [`ElectionError::UnknownGroup`] for either group, [`ElectionError::GroupCycle`] if
    /// `new_parent` lies inside the subtree of `group`; the tree is then unchanged.
    pub fn move_group(&mut self, group: GroupId, new_parent: Option<GroupId>) -> Result<()> {
        let g = self.idx(group)?;
        let p = match new_parent {
            None => None,
            Some(p) => Some(self.idx(p)?),
        };
        if let Some(p) = p
            && self.is_ancestor_or_self_idx(g, p)
        {
            return Err(ElectionError::GroupCycle { group });
        }
        self.parent[g] = p;
        self.rebuild_order()
    }

    fn idx(&self, group: GroupId) -> Result<usize> {
        self.index
            .get(&group)
            .copied()
            .ok_or(ElectionError::UnknownGroup { group })
    }

    pub(crate) fn index_of(&self, group: GroupId) -> Option<usize> {
        self.index.get(&group).copied()
    }

    pub(crate) fn id_at(&self, i: usize) -> GroupId {
        self.ids[i]
    }

    pub(crate) fn parent_idx(&self, i: usize) -> Option<usize> {
        self.parent[i]
    }

    /// Dense indices, every group after its parent.
    pub(crate) fn topological(&self) -> &[usize] {
        &self.order
    }

    fn is_ancestor_or_self_idx(&self, ancestor: usize, mut node: usize) -> bool {
        loop {
            if node == ancestor {
                return true;
            }
            match self.parent[node] {
                Some(p) => node = p,
                None => return false,
            }
        }
    }

    /// Whether `group` is in the tree.
    pub fn contains(&self, group: GroupId) -> bool {
        self.index.contains_key(&group)
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the tree has no groups.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The parent of `group` (`Ok(None)` for a root).
    pub fn parent(&self, group: GroupId) -> Result<Option<GroupId>> {
        let i = self.idx(group)?;
        Ok(self.parent[i].map(|p| self.ids[p]))
    }

    /// Depth of `group` (0 for a root).
    pub fn depth(&self, group: GroupId) -> Result<u32> {
        Ok(self.depth[self.idx(group)?])
    }

    /// `group` followed by its ancestors up to the root.
    pub fn ancestors_and_self(&self, group: GroupId) -> Result<Vec<GroupId>> {
        let mut out = Vec::new();
        let mut cur = Some(self.idx(group)?);
        while let Some(i) = cur {
            out.push(self.ids[i]);
            cur = self.parent[i];
        }
        Ok(out)
    }

    /// Whether `ancestor` is `node` or one of its ancestors.
    pub fn is_ancestor_or_self(&self, ancestor: GroupId, node: GroupId) -> Result<bool> {
        Ok(self.is_ancestor_or_self_idx(self.idx(ancestor)?, self.idx(node)?))
    }

    /// The tree as edges, in parent-first order (feed them back to [`GroupTree::from_edges`]).
    pub fn edges(&self) -> Vec<GroupEdge> {
        self.order
            .iter()
            .map(|&i| GroupEdge {
                group: self.ids[i],
                parent: self.parent[i].map(|p| self.ids[p]),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(g: u64, p: Option<u64>) -> GroupEdge {
        GroupEdge {
            group: GroupId(g),
            parent: p.map(GroupId),
        }
    }

    #[test]
    fn builds_in_any_order_and_lists_parents_first() {
        let t = GroupTree::from_edges([e(3, Some(2)), e(2, Some(1)), e(1, None), e(4, Some(1))])
            .unwrap();
        assert_eq!(t.depth(GroupId(3)).unwrap(), 2);
        assert_eq!(
            t.ancestors_and_self(GroupId(3)).unwrap(),
            vec![GroupId(3), GroupId(2), GroupId(1)]
        );
        let order: Vec<u64> = t.edges().iter().map(|e| e.group.0).collect();
        let pos = |g| order.iter().position(|&x| x == g).unwrap();
        assert!(pos(1) < pos(2) && pos(2) < pos(3) && pos(1) < pos(4));
        assert_eq!(GroupTree::from_edges(t.edges()).unwrap().len(), 4);
    }

    #[test]
    fn rejects_cycles_duplicates_and_unknown_parents() {
        assert!(matches!(
            GroupTree::from_edges([e(1, None), e(2, Some(3)), e(3, Some(2))]),
            Err(ElectionError::GroupCycle { .. })
        ));
        assert_eq!(
            GroupTree::from_edges([e(1, Some(1))]),
            Err(ElectionError::GroupCycle { group: GroupId(1) })
        );
        assert_eq!(
            GroupTree::from_edges([e(1, None), e(1, None)]),
            Err(ElectionError::DuplicateGroup { group: GroupId(1) })
        );
        assert_eq!(
            GroupTree::from_edges([e(1, None), e(2, Some(9))]),
            Err(ElectionError::UnknownGroup { group: GroupId(9) })
        );
    }

    #[test]
    fn moving_a_group_under_its_own_subtree_is_refused() {
        let mut t =
            GroupTree::from_edges([e(1, None), e(2, Some(1)), e(3, Some(2)), e(4, Some(1))])
                .unwrap();
        assert_eq!(
            t.move_group(GroupId(2), Some(GroupId(3))),
            Err(ElectionError::GroupCycle { group: GroupId(2) })
        );
        assert_eq!(t.parent(GroupId(2)).unwrap(), Some(GroupId(1)));
        t.move_group(GroupId(2), Some(GroupId(4))).unwrap();
        assert_eq!(t.depth(GroupId(3)).unwrap(), 3);
        t.add_group(GroupId(5), Some(GroupId(3))).unwrap();
        assert_eq!(t.depth(GroupId(5)).unwrap(), 4);
        assert_eq!(
            t.add_group(GroupId(6), Some(GroupId(60))),
            Err(ElectionError::UnknownGroup { group: GroupId(60) })
        );
    }
}
