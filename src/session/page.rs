//! A page of a topic's view read at one position, with the source's stored view for the keys memory evicted (`GET /topics/{topic}/view`).

use std::sync::Arc;

use crate::hub::{Filter, Topic, ViewPage};
use crate::protocol::{ClientError, ErrorCode};
use crate::source::Source;
use crate::state::AppState;

/// [`Topic::view_after`] with the source's stored view pinned at the same
/// position (the embedded log), so keys the in-memory view evicted are among
/// the candidates; they are read on a blocking thread.
pub async fn view_page(
    state: &AppState,
    topic: &Arc<Topic>,
    filter: &Filter,
    after: Option<&str>,
    take: Option<usize>,
) -> Result<ViewPage, ClientError> {
    let mut page = None;
    state.source.pinned_view(&topic.name, &mut |stored| {
        page = Some(topic.view_after(filter, after, take, stored));
    });
    let mut page = page.unwrap_or_else(|| topic.view_after(filter, after, take, None));
    if !page.needs_store() {
        return Ok(page);
    }
    let name = Arc::clone(&topic.name);
    let (filter, after) = (filter.clone(), after.map(str::to_owned));
    let (back, read) = tokio::task::spawn_blocking(move || {
        let read = page.complete(&name, &filter, after.as_deref(), take);
        (page, read)
    })
    .await
    .map_err(|e| ClientError::new(ErrorCode::Unavailable, e.to_string()))?;
    read.map_err(|e| ClientError::new(ErrorCode::Unavailable, format!("the log's view: {e}")))?;
    page = back;
    Ok(page)
}
