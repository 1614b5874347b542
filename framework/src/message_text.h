// Moved to the public <hooklens/message_text.h> (plugins, the viewer and examples quote values too).
#pragma once
#include <hooklens/message_text.h>
